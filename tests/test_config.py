"""MatcherConfig validation and presets."""

import pytest

from l2m_plugin import PRESETS, MatcherConfig


def test_defaults_are_the_authors_zeb_harness():
    c = MatcherConfig()
    assert c.coarse_res == (560, 560) and c.upsample_res == (864, 864)
    assert c.normalize is False and c.color_order == "RGB" and c.displacement_scale == "l2m"
    assert PRESETS["l2m"] == c
    assert PRESETS["romatch"].normalize and PRESETS["romatch"].displacement_scale == "romatch"


def test_scale_factors():
    assert MatcherConfig().scale_factors() == pytest.approx((1.0, 864 / 560))
    assert PRESETS["l2m-fork-defaults"].scale_factors() == pytest.approx((1.0, 2.0))
    assert PRESETS["romatch"].replace(coarse_res=672, upsample_res=1344).scale_factors() == pytest.approx((1.2, 2.4))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"coarse_res": 500}, "multiples of 14"),
        ({"upsample_res": 870}, "multiples of 8"),
        ({"dtype": "float64"}, "dtype"),
        ({"color_order": "rgb"}, "color_order"),
        ({"encoder": "vitg14"}, "encoder"),
        ({"displacement_scale": "x"}, "displacement_scale"),
        ({"coarse_res": "big"}, "coarse_res"),
    ],
)
def test_invalid_values_are_refused(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        MatcherConfig(**kwargs)


def test_frozen_and_round_trip():
    c = MatcherConfig(coarse_res=(280, 420), upsample_res=None)
    with pytest.raises(AttributeError):
        c.coarse_res = (14, 14)
    assert MatcherConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="Unknown"):
        MatcherConfig.from_dict({"coarse": 1})


def test_yaml_presets_equal_the_python_presets():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "matcher"
    assert MatcherConfig.from_yaml(root / "l2m.yaml") == PRESETS["l2m"]
    assert MatcherConfig.from_yaml(root / "romatch.yaml") == PRESETS["romatch"]
    assert MatcherConfig.from_yaml(root / "l2m_tiny.yaml") == PRESETS["l2m-tiny"]
    for path in root.glob("*.yaml"):  # every YAML is the preset of its name
        assert MatcherConfig.from_yaml(path) == PRESETS[path.stem.replace("_", "-")], path
    assert MatcherConfig.from_yaml(root / "l2m.yaml", ["upsample_res=null"]).upsample_res is None
    with pytest.raises(ValueError, match="l2m.yaml"):
        MatcherConfig.from_yaml(root / "l2m.yaml", ["coarse_res=13"])


def test_l2m_tiny_yaml_preset_and_shipped_checkpoint_agree():
    """configs/matcher/l2m_tiny.yaml == PRESETS["l2m-tiny"] == the config stored in
    l2m_plugin/assets/l2m_tiny.pth: a retrained l2m-tiny must update the other two."""
    from pathlib import Path

    from l2m_plugin.weights import packaged_path, read_checkpoint

    stored = MatcherConfig.from_dict(read_checkpoint(packaged_path("l2m-tiny"))["config"])
    yaml = MatcherConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "matcher" / "l2m_tiny.yaml")
    fix = f"update configs/matcher/l2m_tiny.yaml and PRESETS['l2m-tiny'] to the checkpoint's config {stored.to_dict()}"
    assert yaml == stored, fix
    assert PRESETS["l2m-tiny"] == stored, fix


def test_arch_name_and_same_network():
    assert PRESETS["l2m"].arch_name == "roma/vitl14" and PRESETS["l2m-tiny"].arch_name == "tiny-ds"
    assert MatcherConfig(arch={"coarse": "cnn", "coarse_dim": 64}, coarse_res=64).arch_name == "custom"
    # inference settings may differ; the architecture (and the ViT of DINOv2 networks) may not
    assert PRESETS["l2m"].same_network(PRESETS["romatch"])
    assert PRESETS["tiny"].same_network(PRESETS["tiny"].replace(coarse_res=256))
    assert PRESETS["l2m-tiny"].same_network(PRESETS["l2m-tiny"].replace(encoder="vits14"))  # unused by tiny-ds
    assert not PRESETS["tiny"].same_network(PRESETS["l2m-tiny"])  # the first l2m-tiny's network is another
    assert not PRESETS["l2m"].same_network(PRESETS["l2m"].replace(encoder="vits14"))
    assert not PRESETS["l2m-tiny"].same_network(PRESETS["romatch"])


def test_resolve_config(tmp_path):
    from pathlib import Path

    from l2m_plugin.config import resolve_config

    root = Path(__file__).resolve().parents[1] / "configs" / "matcher"
    assert resolve_config() is None
    assert resolve_config("l2m-tiny") is PRESETS["l2m-tiny"]
    assert resolve_config(config=str(root / "romatch.yaml")) == PRESETS["romatch"]
    assert resolve_config(config=PRESETS["tiny"].to_dict()) == PRESETS["tiny"]
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_config("nope")
    with pytest.raises(ValueError, match="not both"):
        resolve_config("l2m", root / "l2m.yaml")
    with pytest.raises(OSError):
        resolve_config(config=tmp_path / "missing.yaml")
