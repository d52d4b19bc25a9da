"""The demo's report arithmetic (rlkit.drivers.vqa_report), on hand-computed values."""
import math

import pytest

from rlkit.drivers.vqa_report import (
    binomial_se,
    gain,
    image_gains,
    mean_se,
    with_merged_type,
)


def _res(acc: float, n: int, by: dict) -> dict:
    return {"accuracy": acc, "n": n, "by_type": {t: {"accuracy": a, "n": m} for t, (a, m) in by.items()}}


def test_binomial_se():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)  # sqrt(0.25 / 100)
    assert binomial_se(0.9, 400) == pytest.approx(0.015)  # sqrt(0.09 / 400)
    assert binomial_se(0.3, 0) == 0.0


def test_image_gains_separates_what_needs_the_image():
    before = {"real": _res(0.4, 200, {"color": (0.5, 100), "yesno": (0.5, 100)}),
              "blind": _res(0.3, 200, {"color": (0.1, 100), "yesno": (0.5, 100)})}
    after = {"real": _res(0.8, 200, {"color": (0.8, 100), "yesno": (0.8, 100)}),
             "blind": _res(0.46, 200, {"color": (0.12, 100), "yesno": (0.8, 100)})}
    g = image_gains(before, after, ["color", "yesno"])
    # colour: +0.30 with images, se sqrt(0.25/100 + 0.16/100) = sqrt(0.0041); blank +0.02, se sqrt(0.0009 + 0.001056)
    assert g["color"]["real"]["gain"] == pytest.approx(0.30)
    assert g["color"]["real"]["se"] == pytest.approx(math.sqrt(0.0041))
    assert g["color"]["blind"]["gain"] == pytest.approx(0.02)
    assert g["color"]["blind"]["se"] == pytest.approx(math.sqrt(0.0009 + 0.001056))
    assert g["color"]["needs_image"] is True
    # yes/no: the same +0.30 with blank images: learned without looking
    assert g["yesno"]["blind"]["gain"] == pytest.approx(0.30)
    assert g["yesno"]["needs_image"] is False
    # a real-image gain within 2 s.e. does not count: +0.05 with se sqrt(0.0041) = 0.064
    after["real"]["by_type"]["color"]["accuracy"] = 0.55
    assert image_gains(before, after, ["color"])["color"]["needs_image"] is False
    assert gain(before["real"], after["real"])["gain"] == pytest.approx(0.4)  # overall


def test_mean_se_over_seeds():
    m, se = mean_se([0.2, 0.4])
    assert m == pytest.approx(0.3)
    assert se == pytest.approx(0.1)  # sample stdev sqrt(0.02) / sqrt(2)
    m1, se1 = mean_se([0.7])
    assert m1 == 0.7 and math.isnan(se1)
    with pytest.raises(ValueError):
        mean_se([])


def test_merged_type_weights_by_count():
    r = _res(0.5, 700, {"color": (0.8, 100), "shape": (0.4, 300), "yesno": (0.5, 300)})
    m = with_merged_type(r, "image", ["color", "shape"])
    # (0.8 * 100 + 0.4 * 300) / 400 = 200 / 400
    assert m["by_type"]["image"] == {"accuracy": pytest.approx(0.5), "n": 400}
    assert m["by_type"]["color"] == r["by_type"]["color"] and "image" not in r["by_type"]
