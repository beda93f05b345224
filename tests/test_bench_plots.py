"""The bench's pictures: colours of masks and error maps, what the charts say, and which files each row set gives."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from rsseg.bench import plots
from rsseg.bench.plots import (
    CORRECT_COLOUR,
    colourise,
    error_map,
    file_safe,
    free_colour,
    metric_bars,
    per_class_heatmap,
    qualitative_panel,
    speed_accuracy,
    write_plots,
    wrong_colour,
)

ISPRS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
BINARY = [(0, 0, 0), (255, 255, 255)]
SEMANTIC_META = {"dataset": "potsdam", "profile": "smoke", "task": "semantic", "synthetic": True}
REFERRING_META = {"dataset": "refsegrs", "profile": "smoke", "task": "referring", "synthetic": False}
SEMANTIC = [
    {"method": "majority class", "mIoU": 0.2, "mF1": 0.3, "OA": 0.6, "Kappa": 0.0, "IoU/road": 0.6, "params": 0},
    {"method": "unet", "mIoU": 0.5, "mF1": 0.6, "OA": 0.8, "Kappa": 0.5, "boundary_WF": 0.3, "IoU/road": 0.7,
     "IoU/car": 0.3, "params": 14_000_000, "inference_img_per_s": 3.0},
    {"method": "d2ls", "failed": "RuntimeError: out of memory"},
    {"method": "idgbr(unet)", "mIoU": 0.55, "mF1": 0.65, "OA": 0.82, "Kappa": 0.55, "boundary_WF": 0.4,
     "IoU/road": 0.72, "IoU/car": 0.38, "params": 900_000_000, "inference_img_per_s": 0.05, "note": "refined"},
]
PR = ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
REFERRING = [
    {"method": "all target", "oIoU": 0.2, "mIoU": 0.2, **dict.fromkeys(PR, 0.0), "params": 0},
    {"method": "danet", "oIoU": 0.6, "mIoU": 0.55, **dict.fromkeys(PR, 0.5), "params": 2_000_000,
     "inference_img_per_s": 5.0},
]


@pytest.fixture
def drawn(monkeypatch):
    """The texts and titles of every figure the plots save, by file name (read before the figure closes)."""
    seen: dict[str, dict] = {}
    save = plots._save

    def spy(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        seen[path.name] = {"title": ax.get_title(), "texts": [t.get_text() for t in ax.texts],
                           "xticks": [t.get_text() for t in ax.get_xticklabels()]}
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def test_colourise_maps_each_class_to_its_palette_colour_and_ignore_to_the_ignore_colour():
    mask = np.array([[0, 1, 2], [3, 4, 5], [255, 0, 7]])  # 7: outside the palette, drawn as ignore too
    out = colourise(mask, ISPRS, ignore_colour=(1, 2, 3))
    assert out.dtype == np.uint8 and out.shape == (3, 3, 3)
    for (i, j), label in np.ndenumerate(mask):
        assert tuple(out[i, j]) == (ISPRS[label] if label < len(ISPRS) else (1, 2, 3))
    assert tuple(colourise(mask, ISPRS)[2, 0]) == free_colour(ISPRS)  # default: a colour no class uses


@pytest.mark.parametrize("palette", [ISPRS, BINARY])
def test_the_default_ignore_colour_is_no_class_colour(palette):
    assert free_colour(palette) not in palette  # ISPRS impervious is white, binary uses black and white


@pytest.mark.parametrize("palette", [ISPRS, BINARY])
def test_the_wrong_colour_is_apart_from_every_class_the_ignore_colour_and_the_correct_grey(palette):
    """ISPRS clutter is red: an error drawn in red would read as clutter."""
    ignore = free_colour(palette)
    wrong = np.array(wrong_colour(palette, ignore), dtype=float)
    taken = np.array([*palette, ignore, CORRECT_COLOUR], dtype=float)
    assert np.linalg.norm(taken - wrong, axis=1).min() > 100


def test_error_map_marks_exactly_the_wrong_scored_pixels():
    rng = np.random.default_rng(0)
    target, pred = rng.integers(0, 3, (16, 16)), rng.integers(0, 3, (16, 16))
    target[:3] = 255
    out = error_map(pred, target, ignore_colour=(7, 7, 7), wrong=(1, 2, 3))
    is_colour = {name: (out == np.array(colour)).all(-1)
                 for name, colour in (("wrong", (1, 2, 3)), ("right", CORRECT_COLOUR), ("ignored", (7, 7, 7)))}
    scored = target != 255
    np.testing.assert_array_equal(is_colour["wrong"], scored & (pred != target))
    np.testing.assert_array_equal(is_colour["right"], scored & (pred == target))
    np.testing.assert_array_equal(is_colour["ignored"], ~scored)  # whatever the prediction


def test_file_safe_names():
    assert file_safe("Pr@0.5") == "Pr0.5" and file_safe("boundary_WF") == "boundary_WF"


def test_semantic_plots(tmp_path, drawn):
    written = write_plots(tmp_path, SEMANTIC, SEMANTIC_META)
    bars = {f"bar_{k}.png" for k in ("mIoU", "mF1", "OA", "Kappa", "boundary_WF")}  # no row has mWFm
    assert {p.name for p in written} == bars | {"per_class_iou.png", "speed_accuracy.png"}
    assert all(p.parent == tmp_path and p.stat().st_size > 0 for p in written)
    miou = drawn["bar_mIoU.png"]
    assert miou["xticks"] == [row["method"] for row in SEMANTIC]  # row order, the failed one included
    assert miou["texts"] == ["20.0", "50.0", "failed", "55.0"]  # values in %, the failed method a labelled gap
    assert "potsdam" in miou["title"] and "smoke" in miou["title"] and "(SYNTHETIC DATA)" in miou["title"]
    assert drawn["bar_boundary_WF.png"]["texts"] == ["n/a", "30.0", "failed", "40.0"]  # the reference has none
    heat = drawn["per_class_iou.png"]
    assert heat["xticks"] == ["road", "car"]  # first-seen order
    assert heat["texts"] == ["60.0", "70.0", "30.0", "72.0", "38.0"]  # blank: the reference's car, failed row
    assert "unet (14.0M)" in drawn["speed_accuracy.png"]["texts"]
    assert "majority class" in drawn["speed_accuracy.png"]["texts"]  # as a dashed reference line


def test_referring_plots_have_no_heat_map_and_file_safe_names(tmp_path, drawn):
    written = {p.name for p in write_plots(tmp_path, REFERRING, REFERRING_META)}
    assert written == {"bar_oIoU.png", "bar_mIoU.png", *(f"bar_{file_safe(k)}.png" for k in PR), "speed_accuracy.png"}
    assert "bar_Pr0.5.png" in written
    assert per_class_heatmap(tmp_path, REFERRING, REFERRING_META) is None
    assert "SYNTHETIC" not in drawn["bar_oIoU.png"]["title"]


def test_plots_need_their_data(tmp_path):
    references = [SEMANTIC[0], SEMANTIC[2]]  # a reference row and a failed one: nothing was timed
    assert speed_accuracy(tmp_path, references, SEMANTIC_META) is None
    assert metric_bars(tmp_path, [SEMANTIC[2]], SEMANTIC_META) == []
    assert per_class_heatmap(tmp_path, [SEMANTIC[2]], SEMANTIC_META) is None
    assert list(tmp_path.iterdir()) == []


def test_charts_widen_with_the_methods(tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir(), many.mkdir()
    rows = [{**SEMANTIC[1], "method": f"m{i}", "IoU/building": 0.5, "IoU/tree": 0.4} for i in range(10)]
    [small] = [p for p in metric_bars(one, rows[:1], SEMANTIC_META) if p.name == "bar_mIoU.png"]
    [large] = [p for p in metric_bars(many, rows, SEMANTIC_META) if p.name == "bar_mIoU.png"]
    assert imread(large).shape[1] > imread(small).shape[1]
    short, tall = per_class_heatmap(one, rows[:1], SEMANTIC_META), per_class_heatmap(many, rows, SEMANTIC_META)
    assert imread(tall).shape[0] > imread(short).shape[0]
    assert speed_accuracy(one, rows[:1], SEMANTIC_META).stat().st_size > 0  # a single point on a log axis


def _sample(rng, methods, size=32):
    target = rng.integers(0, 6, (size, size))
    target[:4] = 255
    return {"id": "top_potsdam_2_13_0_0", "image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "target": target, "predictions": {m: rng.integers(0, 6, (size, size)) for m in methods}}


def test_panel_has_a_column_pair_per_method_and_a_row_per_sample(tmp_path):
    rng = np.random.default_rng(0)
    names = [str(i) for i in range(6)]

    def panel(name, methods, n):
        path = qualitative_panel(tmp_path / name, [_sample(rng, methods) for _ in range(n)], ISPRS, names)
        return imread(path).shape[:2]

    height_one, width_one = panel("one.png", ["unet"], 2)
    height_three, width_three = panel("three.png", ["unet", "d2ls", "idgbr(unet)"], 2)
    height_more, width_more = panel("more.png", ["unet"], 4)
    cell = plots.PANEL_CELL * plots.PANEL_DPI
    assert width_three - width_one == pytest.approx(4 * cell, abs=2)  # two more methods: four more columns
    assert width_more == width_one and height_more - height_one == pytest.approx(2 * cell, abs=2)


def test_panel_draws_the_masks_in_the_palette(tmp_path):
    target = np.zeros((40, 40), dtype=np.int64)
    target[:, 20:] = 1
    sample = {"id": "a", "image": np.zeros((40, 40, 3), np.uint8), "target": target,
              "predictions": {"m": np.ones_like(target)}}  # wrong on the left half
    picture = imread(write_plots(tmp_path, [], REFERRING_META, [sample], BINARY, ["background", "target"])[0])
    rgb = (picture[..., :3] * 255).round().astype(int)
    wrong = wrong_colour(BINARY, free_colour(BINARY))
    assert (rgb == wrong).all(-1).sum() > 1000 and (rgb == CORRECT_COLOUR).all(-1).sum() > 1000


def test_panel_without_a_palette_uses_default_colours(tmp_path):
    [path] = write_plots(tmp_path, [], SEMANTIC_META, [_sample(np.random.default_rng(1), ["unet"])])
    assert path.name == "qualitative.png" and path.stat().st_size > 0
