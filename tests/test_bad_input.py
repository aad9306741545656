"""Bad or unusual images through the matcher's public entry points."""

import numpy as np
import pytest
import torch
from PIL import Image

from l2m_plugin import L2M, MatcherConfig
from l2m_plugin.io import ImageLoadError

SMALL = MatcherConfig(encoder="vits14", coarse_res=56, upsample_res=64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return L2M(SMALL)


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    return (rng.random((48, 64, 3)) * 255).astype(np.uint8)


def test_unusual_formats_all_match(model, tmp_path, photo):
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(photo).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(photo).save(tmp_path / "rot.jpg", exif=exif)
    ref = model.match(photo, photo)
    for name in ("gray.png", "rgba.png", "gray16.png", "cmyk.jpg", "rot.jpg"):
        out = model.match(tmp_path / name, photo)
        assert out["warp0"].shape == (1, 64, 64, 2) and torch.isfinite(out["warp0"]).all(), name
        assert out["size0"] == ((48, 64) if name == "rot.jpg" else (64, 48)), name
    # RGBA drops alpha: same pixels, same result
    rgba = model.match(tmp_path / "rgba.png", photo)
    assert torch.allclose(rgba["warp0"], ref["warp0"], atol=1e-5)


def test_missing_corrupt_truncated_and_tiny_images(model, tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    Image.fromarray(photo[:10, :10]).save(tmp_path / "tiny.png")
    for name, pattern in (("missing.jpg", "not found"), ("trunc.jpg", "truncated"), ("corrupt.jpg", "not a readable"), ("tiny.png", "14x14")):
        with pytest.raises(ImageLoadError, match=pattern) as err:
            model.match(tmp_path / name, photo)
        assert name in str(err.value)


def test_very_large_image_is_resized_not_out_of_memory(model, tmp_path):
    Image.new("RGB", (8000, 6000), (120, 60, 30)).save(tmp_path / "big.jpg", quality=50)
    out = model.match(tmp_path / "big.jpg", tmp_path / "big.jpg")
    assert out["size0"] == (8000, 6000) and out["warp0"].shape == (1, 64, 64, 2)
    s = model.sample(out, 100, generator=torch.Generator().manual_seed(0))
    assert (s["keypoints0"][:, 0] <= 8000).all() and (s["keypoints0"][:, 1] <= 6000).all()


def test_forward_rejects_malformed_tensors(model):
    x = torch.rand(1, 3, 56, 56)
    with pytest.raises(KeyError, match="image1"):
        model({"image0": x})
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model({"image0": x, "image1": torch.rand(3, 56, 56)})
    with pytest.raises(ValueError, match="batch size"):
        model({"image0": x, "image1": torch.rand(2, 3, 56, 56)})
