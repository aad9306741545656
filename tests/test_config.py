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
    assert MatcherConfig.from_yaml(root / "l2m.yaml", ["upsample_res=null"]).upsample_res is None
    with pytest.raises(ValueError, match="l2m.yaml"):
        MatcherConfig.from_yaml(root / "l2m.yaml", ["coarse_res=13"])
