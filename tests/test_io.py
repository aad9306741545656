"""Tests for l2m_plugin.io: image reading, EXIF orientation, errors and resizing."""

from __future__ import annotations

import io
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from l2m_plugin.coords import stored_to_upright, upright_size
from l2m_plugin.io import ImageLoadError, LoadedImage, load_image, resize_to_tensor


def _random_rgb(h: int = 30, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _as_array(loaded: LoadedImage) -> np.ndarray:
    assert loaded.image.mode == "RGB"
    return np.asarray(loaded.image)


# --------------------------------------------------------------------------- formats


def test_png_rgb_pixels_preserved(tmp_path):
    arr = _random_rgb(30, 40)
    path = tmp_path / "rgb.png"
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    assert isinstance(loaded, LoadedImage)
    assert loaded.size == (40, 30)
    assert loaded.stored_size == (40, 30)
    assert loaded.orientation == 1
    assert loaded.source == str(path)
    np.testing.assert_array_equal(_as_array(loaded), arr)
    # str path works too
    np.testing.assert_array_equal(_as_array(load_image(str(path))), arr)


def test_jpeg_rgb(tmp_path):
    arr = np.full((30, 40, 3), (200, 100, 50), dtype=np.uint8)
    path = tmp_path / "rgb.jpg"
    Image.fromarray(arr).save(path, quality=95)
    loaded = load_image(path)
    assert loaded.size == (40, 30) and loaded.image.mode == "RGB"
    assert np.abs(_as_array(loaded).astype(int) - arr).max() <= 3


def test_grayscale_L(tmp_path):
    g = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(g).save(path)
    out = _as_array(load_image(path))
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_grayscale_LA_drops_alpha(tmp_path):
    g = np.random.default_rng(2).integers(0, 256, (20, 30), dtype=np.uint8)
    alpha = np.zeros_like(g)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([g, alpha], -1), mode="LA").save(path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    out = _as_array(load_image(path))
    np.testing.assert_array_equal(out[..., 1], g)


def test_palette_with_and_without_transparency(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9)
    idx = np.zeros((20, 20), dtype=np.uint8)
    idx[:, 10:] = 1
    idx[15:, :] = 2
    expected = np.array(palette[:9], dtype=np.uint8).reshape(3, 3)[idx]
    for transparency in (None, 0):
        im = Image.fromarray(idx, mode="P")
        im.putpalette(palette)
        path = tmp_path / f"p_{transparency}.png"
        if transparency is None:
            im.save(path)
        else:
            im.save(path, transparency=transparency)
        with Image.open(path) as check:
            assert check.mode == "P"
            assert ("transparency" in check.info) == (transparency is not None)
        np.testing.assert_array_equal(_as_array(load_image(path)), expected)


def test_rgba_drops_alpha(tmp_path):
    rgb = _random_rgb(20, 25, seed=3)
    rgba = np.concatenate([rgb, np.full((20, 25, 1), 7, np.uint8)], -1)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(_as_array(load_image(path)), rgb)


def test_cmyk_jpeg(tmp_path):
    rgb = np.full((24, 32, 3), (200, 50, 100), dtype=np.uint8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = _as_array(load_image(path))
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - rgb).max() <= 3


def test_16bit_grayscale_png_scaled(tmp_path):
    values = np.array([0, 65535, 32896, 1000, 257, 128], dtype=np.uint16)
    arr = np.resize(values, (16, 18)).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = _as_array(load_image(path))
    expected = np.rint(arr / 257.0)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)
    assert out[0, 1, 0] == 255  # 65535
    assert abs(int(out[0, 2, 0]) - 128) <= 1  # 32896
    assert out.max() == 255  # not clipped: PIL's convert would saturate everything >= 255


def test_pil_mode_I_clipped_and_scaled():
    arr = np.resize(np.array([-5, 0, 32896, 65535, 70000], dtype=np.int32), (16, 20))
    im = Image.fromarray(arr.astype(np.int32))
    assert im.mode == "I"
    out = _as_array(load_image(im))[..., 0]
    np.testing.assert_array_equal(out[0, :5], [0, 0, 128, 255, 255])


def test_pil_mode_F_unit_and_255_ranges():
    unit = np.resize(np.array([0.0, 0.5, 1.0], dtype=np.float32), (16, 16))
    out = _as_array(load_image(Image.fromarray(unit, mode="F")))[..., 0]
    np.testing.assert_array_equal(out[0, :3], [0, 128, 255])
    big = np.resize(np.array([0.0, 100.0, 300.0], dtype=np.float32), (16, 16))
    out = _as_array(load_image(Image.fromarray(big, mode="F")))[..., 0]
    np.testing.assert_array_equal(out[0, :3], [0, 100, 255])


@pytest.mark.parametrize("mode", ["1", "YCbCr", "RGBX", "L", "LA", "P", "CMYK", "I;16B"])
def test_other_pil_modes_convert(mode):
    im = Image.new("RGB", (20, 16), (255, 255, 255)).convert(mode)
    loaded = load_image(im)
    assert loaded.image.mode == "RGB" and loaded.size == (20, 16)
    assert loaded.source == "<PIL image>"


def test_pil_input_not_modified_or_closed():
    arr = _random_rgb(20, 30, seed=4)
    im = Image.fromarray(arr)
    loaded = load_image(im)
    assert loaded.image is not im
    loaded.image.paste((0, 0, 0), (0, 0, 30, 20))
    np.testing.assert_array_equal(np.asarray(im), arr)  # still usable, unchanged
    assert im.size == (30, 20) and im.mode == "RGB"


def test_pil_input_exif_applied():
    im = Image.fromarray(_random_rgb(20, 30, seed=5))
    im.getexif()[0x0112] = 6
    loaded = load_image(im)
    assert loaded.orientation == 6
    assert loaded.stored_size == (30, 20) and loaded.size == (20, 30)
    np.testing.assert_array_equal(_as_array(loaded), np.asarray(im.transpose(Image.ROTATE_270)))
    assert im.size == (30, 20)
    assert load_image(im, exif=False).size == (30, 20)


# --------------------------------------------------------------------------- numpy


def test_numpy_uint8_shapes():
    rgb = _random_rgb(16, 20, seed=6)
    np.testing.assert_array_equal(_as_array(load_image(rgb)), rgb)
    gray = rgb[..., 0]
    out = _as_array(load_image(gray))
    np.testing.assert_array_equal(out[..., 2], gray)
    np.testing.assert_array_equal(_as_array(load_image(gray[..., None])), out)
    rgba = np.concatenate([rgb, np.zeros((16, 20, 1), np.uint8)], -1)
    np.testing.assert_array_equal(_as_array(load_image(rgba)), rgb)
    loaded = load_image(rgb)
    assert loaded.source == "<array>" and loaded.orientation == 1
    assert loaded.stored_size == (20, 16) == loaded.size


def test_numpy_uint16_scaled():
    arr = np.resize(np.array([0, 65535, 32896, 1000], dtype=np.uint16), (16, 16, 3))
    out = _as_array(load_image(arr.astype(np.uint16)))
    assert out[..., 0].flat[0] == 0
    assert 255 in out and out.max() == 255
    np.testing.assert_array_equal(out, np.rint(arr / 257.0).astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_float(dtype):
    arr = np.resize(np.array([0.0, 0.5, 1.0, 0.25], dtype=dtype), (16, 16))
    out = _as_array(load_image(arr.astype(dtype)))[..., 1]
    np.testing.assert_array_equal(out.flat[:4], [0, 128, 255, 64])


@pytest.mark.parametrize("bad", [1.5, -0.1, np.nan])
def test_numpy_float_out_of_range(bad):
    arr = np.zeros((16, 16, 3), dtype=np.float32)
    arr[3, 4, 1] = bad
    with pytest.raises(ImageLoadError, match="array input.*\\[0, 1\\]"):
        load_image(arr)


def test_numpy_bad_shape_and_dtype():
    with pytest.raises(ImageLoadError, match="array input"):
        load_image(np.zeros((16, 16, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="array input"):
        load_image(np.zeros((16, 16, 3), np.int64))
    with pytest.raises(ImageLoadError, match="numpy"):
        load_image(torch.zeros(3, 16, 16))


# --------------------------------------------------------------------------- EXIF


STORED_W, STORED_H = 40, 24
MARKER = (5, 3)  # stored pixel (column, row)


def _marker_image() -> Image.Image:
    arr = np.zeros((STORED_H, STORED_W, 3), np.uint8)
    arr[MARKER[1], MARKER[0]] = 255
    return Image.fromarray(arr)


def _find_marker(arr: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(np.argmax(arr.sum(-1)), arr.shape[:2])
    assert arr[row, col].min() == 255 and (arr.sum(-1) > 0).sum() == 1
    return int(col), int(row)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.png"
    _marker_image().save(path, exif=_exif(orientation))

    loaded = load_image(path)
    assert loaded.orientation == orientation
    assert loaded.stored_size == (STORED_W, STORED_H)
    assert loaded.size == upright_size(STORED_W, STORED_H, orientation)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(_as_array(loaded), np.asarray(ImageOps.exif_transpose(ref)))

    col, row = _find_marker(_as_array(loaded))
    upright_centre = torch.tensor([[col + 0.5, row + 0.5]], dtype=torch.float64)
    stored = loaded.to_stored(upright_centre)
    assert stored.shape == (1, 2)
    torch.testing.assert_close(
        stored,
        torch.tensor([[MARKER[0] + 0.5, MARKER[1] + 0.5]], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    # and the forward map agrees with where the marker went
    fwd = stored_to_upright(
        torch.tensor([[MARKER[0] + 0.5, MARKER[1] + 0.5]]), STORED_W, STORED_H, orientation
    )
    torch.testing.assert_close(fwd, upright_centre.float(), atol=1e-4, rtol=0)
    # corners of the upright image map to corners of the stored image
    w, h = loaded.size
    corners = loaded.to_stored(torch.tensor([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]]))
    assert set(map(tuple, corners.tolist())) == {
        (0.0, 0.0),
        (STORED_W, 0.0),
        (0.0, STORED_H),
        (STORED_W, STORED_H),
    }

    raw = load_image(path, exif=False)
    assert raw.orientation == 1 and raw.size == (STORED_W, STORED_H)
    assert _find_marker(_as_array(raw)) == MARKER
    torch.testing.assert_close(raw.to_stored(upright_centre), upright_centre)


def test_exif_orientation_jpeg(tmp_path):
    arr = np.zeros((STORED_H, STORED_W, 3), np.uint8)
    arr[2:5, 4:7] = 255  # 3x3 marker centred on stored pixel (5, 3)
    path = tmp_path / "o6.jpg"
    Image.fromarray(arr).save(path, quality=100, exif=_exif(6))
    loaded = load_image(path)
    assert loaded.orientation == 6 and loaded.size == (STORED_H, STORED_W)
    rows, cols = np.nonzero(_as_array(loaded).mean(-1) > 128)
    assert len(rows) == 9  # the 3x3 marker, rotated
    centre = torch.tensor([[float(cols.mean()) + 0.5, float(rows.mean()) + 0.5]])
    stored = loaded.to_stored(centre)
    torch.testing.assert_close(stored, torch.tensor([[5.5, 3.5]]), atol=1.0, rtol=0)
    assert stored.tolist() == [[5.5, 3.5]]  # symmetric marker: centroid is exact


@pytest.mark.parametrize("value", [0, 9])
def test_invalid_orientation_warns(tmp_path, value):
    path = tmp_path / f"bad{value}.png"
    _marker_image().save(path, exif=_exif(value))
    with pytest.warns(UserWarning, match="orientation") as record:
        loaded = load_image(path)
    assert record[0].filename == __file__  # stacklevel points at the caller
    assert loaded.orientation == 1 and loaded.size == (STORED_W, STORED_H)
    assert _find_marker(_as_array(loaded)) == MARKER


def test_valid_orientation_does_not_warn(tmp_path):
    path = tmp_path / "ok.png"
    _marker_image().save(path, exif=_exif(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).orientation == 3


def test_to_stored_int_and_bad_shape():
    loaded = load_image(np.zeros((16, 20, 3), np.uint8))
    out = loaded.to_stored(torch.tensor([[1, 2]]))
    assert out.dtype == torch.float32 and out.tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError):
        loaded.to_stored(torch.zeros(4, 3))


# --------------------------------------------------------------------------- errors


def _valid_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_random_rgb(120, 160, seed=7)).save(buf, fmt)
    return buf.getvalue()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="Image file not found") as exc:
        load_image(path)
    assert str(path) in str(exc.value)


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="directory") as exc:
        load_image(tmp_path)
    assert str(tmp_path) in str(exc.value)


@pytest.mark.parametrize(
    "name, make, fragment",
    [
        ("empty.jpg", lambda: b"", "empty"),
        ("random.png", lambda: np.random.default_rng(0).bytes(5000), "not a readable image"),
        ("trunc.jpg", lambda: (b := _valid_bytes("JPEG"))[: int(0.6 * len(b))], "truncated"),
        ("trunc.png", lambda: (b := _valid_bytes("PNG"))[: int(0.6 * len(b))], "truncated"),
    ],
)
def test_unreadable_files(tmp_path, name, make, fragment):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageLoadError, match=fragment) as exc:
        load_image(path)
    msg = str(exc.value)
    assert name in msg and "re-download" in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_error_is_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_image(tmp_path / "missing.png")


def test_too_small(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (10, 10)).save(path)
    with pytest.raises(ImageLoadError, match="14x14") as exc:
        load_image(path)
    assert "small.png" in str(exc.value) and "10x10" in str(exc.value)
    with pytest.raises(ImageLoadError, match="14"):
        load_image(np.zeros((13, 100), np.uint8))
    assert load_image(np.zeros((14, 14), np.uint8)).size == (14, 14)


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 100*100 is above, below 2x
    with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS") as exc:
        load_image(path)
    assert "big.png" in str(exc.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # above 2x: Pillow itself raises
    with pytest.raises(ImageLoadError, match="MAX_IMAGE_PIXELS"):
        load_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(path).size == (100, 100)


# --------------------------------------------------------------------------- resizing


def test_large_image_loads_and_resizes(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (8000, 6000), (90, 160, 30)).save(path, quality=90)
    start = time.perf_counter()
    loaded = load_image(path)
    assert loaded.size == (8000, 6000) == loaded.stored_size
    t = resize_to_tensor(loaded.image, (560, 560))
    elapsed = time.perf_counter() - start
    assert t.shape == (3, 560, 560) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    torch.testing.assert_close(
        t.mean(dim=(1, 2)), torch.tensor([90, 160, 30]) / 255.0, atol=2 / 255, rtol=0
    )
    assert elapsed < 5.0


@pytest.mark.parametrize("size", [(60, 80), (200, 150), (97, 131)])
def test_resize_matches_torchvision(size):
    from torchvision.transforms import InterpolationMode, Resize

    im = Image.fromarray(_random_rgb(97, 131, seed=8))
    ours = resize_to_tensor(im, size)
    ref_img = Resize(size, interpolation=InterpolationMode.BICUBIC)(im)
    ref = torch.from_numpy(np.asarray(ref_img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    assert ours.shape == (3, *size) and ours.dtype == torch.float32
    assert ours.is_contiguous()
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=0)


def test_resize_same_size_is_exact():
    arr = _random_rgb(20, 30, seed=9)
    t = resize_to_tensor(Image.fromarray(arr), (20, 30))
    np.testing.assert_array_equal(t.numpy(), arr.transpose(2, 0, 1).astype(np.float32) / 255.0)


def test_resize_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB"):
        resize_to_tensor(Image.new("L", (20, 20)), (10, 10))
