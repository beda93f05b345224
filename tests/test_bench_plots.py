"""The bench's pictures: colours of masks and error maps, what the charts say, and which files each row set gives."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from rsseg.bench import plots
from rsseg.bench.plots import (
    CORRECT_COLOUR,
    colourise,
    error_map,
    file_safe,
    free_colour,
    interval_note,
    label_offsets,
    metric_bars,
    pairwise_grid,
    per_class_heatmap,
    qualitative_panel,
    speed_accuracy,
    speed_accuracy_figure,
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
    """What every figure the plots save draws, by file name (read before the figure closes): title, texts (and
    where: ``cells``, (x, y) → text), tick labels, bars (centre x → height), error bars (x, bottom, top of each
    vertical segment, from the ErrorbarContainers' LineCollections) and images (data, NaN where masked; clim)."""
    seen: dict[str, dict] = {}
    save = plots._save

    def spy(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        segments = [segment for container in ax.containers if isinstance(container, ErrorbarContainer)
                    for collection in container.lines[2] for segment in collection.get_segments()]
        seen[path.name] = {
            "title": ax.get_title(), "texts": [t.get_text() for t in ax.texts],
            "cells": {tuple(map(float, t.get_position())): t.get_text() for t in ax.texts},
            "xticks": [t.get_text() for t in ax.get_xticklabels()],
            "yticks": [t.get_text() for t in ax.get_yticklabels()],
            "bars": {p.get_x() + p.get_width() / 2: p.get_height() for p in ax.patches},
            "errorbars": sorted((float(s[0, 0]), *sorted(map(float, s[:, 1]))) for s in segments),
            "images": [(np.ma.filled(im.get_array().astype(float), np.nan), im.get_clim(), im.norm)
                       for im in ax.images],
        }
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
    for name in bars:  # no row has an interval: no error bar, no note, nothing moved
        assert drawn[name]["errorbars"] == [] and "error bars" not in drawn[name]["title"]


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


# --------------------------------------------------------------------------------------------------
# Bootstrap intervals (error bars) and paired comparisons (pairwise heat maps)

INTERVALS = {"n_units": 14, "unit": "tiles", "n_resamples": 2000, "level": 0.95}


def _with_intervals() -> list[dict]:
    majority, unet, failed, idgbr = (dict(row) for row in SEMANTIC)
    majority.update(mIoU_lo=0.1, mIoU_hi=0.3)  # a reference row: never an error bar, whatever it carries
    unet.update(mIoU_lo=0.45, mIoU_hi=0.58, mIoU_seed_std=0.2, OA_lo=0.7, OA_hi=0.9,
                Kappa_lo=math.nan, Kappa_hi=0.6, mF1_lo=0.5)  # Kappa: BCa gave NaN; mF1: no upper bound
    idgbr.update(mIoU_lo=0.52, mIoU_hi=0.6, mIoU_seed_std=0.01,  # seed_std: not drawn
                 OA_lo=0.83, OA_hi=0.86)  # OA 82 %: below its interval (a bootstrap interval need not hold it)
    return [majority, unet, failed, idgbr]


def test_bar_charts_draw_the_intervals_as_asymmetric_error_bars(tmp_path, drawn):
    written = write_plots(tmp_path, _with_intervals(), {**SEMANTIC_META, "intervals": INTERVALS})
    assert {p.name for p in written} >= {"bar_mIoU.png", "bar_OA.png", "bar_Kappa.png", "bar_mF1.png"}
    miou = drawn["bar_mIoU.png"]
    # exactly the two methods' bars (x 1 and 3), from lo to hi in %; not the reference (x 0) nor the failed row
    assert miou["errorbars"] == [pytest.approx((1, 45, 58)), pytest.approx((3, 52, 60))]
    _, low, high = miou["errorbars"][0]
    assert (miou["bars"][1] - low, high - miou["bars"][1]) == pytest.approx((5, 8))  # yerr = [value − lo, hi − value]
    _, low, high = miou["errorbars"][1]
    assert (miou["bars"][3] - low, high - miou["bars"][3]) == pytest.approx((3, 5))
    assert miou["texts"] == ["20.0", "50.0", "failed", "55.0"]  # the value labels stay
    assert miou["title"].endswith("\nerror bars: 95 % bootstrap interval over 14 tiles")
    # OA: idgbr's 82 % lies below its interval 83–86: the bar still spans exactly lo..hi
    assert drawn["bar_OA.png"]["errorbars"] == [pytest.approx((1, 70, 90)), pytest.approx((3, 83, 86))]
    assert drawn["bar_OA.png"]["bars"][3] == pytest.approx(82)
    for name in ("bar_Kappa.png", "bar_mF1.png", "bar_boundary_WF.png"):  # a NaN bound, a missing one, none
        assert drawn[name]["errorbars"] == [] and "error bars" not in drawn[name]["title"]


def test_the_interval_note_follows_the_bench_meta():
    assert interval_note({"intervals": INTERVALS}) == "error bars: 95 % bootstrap interval over 14 tiles"
    referring = {"n_units": 3000, "unit": "expressions", "n_resamples": 1000, "level": 0.9}
    assert interval_note({"intervals": referring}) == "error bars: 90 % bootstrap interval over 3000 expressions"
    assert interval_note({}) == "error bars: 95 % bootstrap interval"  # rows with bounds but no meta


METHODS = ["unet", "idgbr(unet)", "deeplabv3plus"]  # the non-reference, non-failed rows, in row order
PAIRWISE_ROWS = [*SEMANTIC, {**SEMANTIC[1], "method": "deeplabv3plus", "mIoU": 0.52}]
PAIRWISE = {
    "mIoU": [
        {"a": "idgbr(unet)", "b": "unet", "difference": 0.05, "low": 0.01, "high": 0.09, "flip_rate": 0.01,
         "distinguishable": True},
        {"a": "unet", "b": "deeplabv3plus", "difference": -0.003, "low": -0.01, "high": 0.004, "flip_rate": 0.3,
         "distinguishable": False},
        # both orders given: drawn as given
        {"a": "idgbr(unet)", "b": "deeplabv3plus", "difference": 0.03, "low": 0.0, "high": 0.06, "flip_rate": 0.06,
         "distinguishable": False},
        {"a": "deeplabv3plus", "b": "idgbr(unet)", "difference": -0.03, "low": -0.06, "high": 0.0,
         "flip_rate": 0.06, "distinguishable": False},
        # a reference and a failed method: not in the map
        {"a": "unet", "b": "majority class", "difference": 0.3, "low": 0.2, "high": 0.4, "flip_rate": 0.0,
         "distinguishable": True},
        {"a": "d2ls", "b": "unet", "difference": 0.1, "low": 0.05, "high": 0.2, "flip_rate": 0.0,
         "distinguishable": True},
    ],
    "Pr@0.5": [{"a": "unet", "b": "idgbr(unet)", "difference": 0.2, "low": 0.1, "high": 0.3, "flip_rate": 0.0,
                "distinguishable": True}],
    "OA": [],  # no comparison: no file
}
# (row, column) → (difference in points, distinguishable), both directions
EXPECTED = {(1, 0): (5.0, True), (0, 1): (-5.0, True), (0, 2): (-0.3, False), (2, 0): (0.3, False),
            (1, 2): (3.0, False), (2, 1): (-3.0, False)}


def test_pairwise_heat_map_draws_each_difference_both_ways_and_marks_the_indistinguishable(tmp_path, drawn):
    meta = {**SEMANTIC_META, "pairwise": PAIRWISE, "intervals": INTERVALS}
    written = {p.name for p in write_plots(tmp_path, PAIRWISE_ROWS, meta)}
    assert {"pairwise_mIoU.png", "pairwise_Pr0.5.png"} <= written and "pairwise_OA.png" not in written
    assert (tmp_path / "pairwise_mIoU.png").stat().st_size > 0
    heat = drawn["pairwise_mIoU.png"]
    assert heat["xticks"] == METHODS and heat["yticks"] == METHODS
    assert "potsdam" in heat["title"] and "(SYNTHETIC DATA)" in heat["title"] and "≈" in heat["title"]
    [(grid, clim, norm)] = heat["images"]
    assert grid.shape == (3, 3) and np.isnan(np.diag(grid)).all()  # the diagonal is empty
    for (i, j), (points, _) in EXPECTED.items():
        assert grid[i, j] == pytest.approx(points)  # row method minus column method, in points
    assert clim == pytest.approx((-5, 5)) and norm(0.0) == pytest.approx(0.5)  # symmetric: 0 at the map's centre
    assert set(heat["cells"]) == {(j, i) for i, j in EXPECTED}  # text (x = column, y = row) in every filled cell
    for (i, j), (points, distinguishable) in EXPECTED.items():
        text = heat["cells"][(j, i)]
        assert float(text.split()[0]) == pytest.approx(points) and text.startswith("+" if points > 0 else "-")
        assert ("≈" in text) == (not distinguishable)
    assert [t for t in heat["texts"] if "≈" in t] == [heat["cells"][(j, i)] for i in range(3) for j in range(3)
                                                      if (i, j) in EXPECTED and not EXPECTED[i, j][1]]
    [(grid, clim, _)] = drawn["pairwise_Pr0.5.png"]["images"]
    assert grid[0, 1] == pytest.approx(20) and grid[1, 0] == pytest.approx(-20) and np.isnan(grid[:, 2]).all()
    assert clim == pytest.approx((-20, 20))


def test_pairwise_heat_maps_only_with_comparisons(tmp_path):
    assert not any(p.name.startswith("pairwise_") for p in write_plots(tmp_path, PAIRWISE_ROWS, SEMANTIC_META))
    one = [SEMANTIC[0], SEMANTIC[1]]  # one method besides the reference: nothing to compare
    written = write_plots(tmp_path, one, {**SEMANTIC_META, "pairwise": {"mIoU": PAIRWISE["mIoU"]}})
    assert not any(p.name.startswith("pairwise_") for p in written)


def test_pairwise_grid_reads_as_dict_comparisons_and_derives_distinguishable():
    """``PairedComparison.as_dict`` names the difference ``estimate``; without ``distinguishable`` the interval
    decides (excludes 0)."""
    comparisons = [{"a": "unet", "b": "idgbr(unet)", "estimate": -0.05, "low": -0.08, "high": -0.02},
                   {"a": "deeplabv3plus", "b": "unet", "estimate": 0.01, "low": -0.01, "high": 0.03}]
    methods, grid, apart = pairwise_grid(PAIRWISE_ROWS, comparisons)
    assert methods == METHODS
    assert grid[0, 1] == pytest.approx(-5) and grid[1, 0] == pytest.approx(5) and apart[0, 1] and apart[1, 0]
    assert grid[2, 0] == pytest.approx(1) and grid[0, 2] == pytest.approx(-1) and not apart[2, 0] | apart[0, 2]
    assert np.isnan(grid[1, 2]) and np.isnan(grid[2, 1])  # no comparison given


CROWDED = [
    {"method": "majority class", "mIoU": 0.300, "params": 0},
    {"method": "all background", "mIoU": 0.301, "params": 0},
    *({"method": m, "mIoU": 0.5 + 0.001 * i, "params": (i + 1) * 5_000_000, "inference_img_per_s": 10 + 0.05 * i}
      for i, m in enumerate(("unet", "deeplabv3plus", "danet", "d2ls", "sdci", "unetformer"))),
    {"method": "fast", "mIoU": 0.302, "params": 1_000_000, "inference_img_per_s": 400.0},  # near the references
]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_speed_accuracy_labels_of_close_points_do_not_overlap(tmp_path, monkeypatch):
    """Six methods within 0.5 points and 3 % in speed, two references 0.1 points apart, one method near them."""
    saved = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, *args, **kwargs: saved.append(fig) or save(fig, path, *args,
                                                                                                      **kwargs))
    assert speed_accuracy(tmp_path, CROWDED, SEMANTIC_META).stat().st_size > 0
    [fig] = saved
    canvas = FigureCanvasAgg(fig)  # pyplot let go of it when saved
    canvas.draw()  # the figure as saved (no layout pass moved it)
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    methods = [f"{r['method']} ({r['params'] / 1e6:.1f}M)" for r in CROWDED[2:]]
    assert set(boxes) == {"majority class", "all background", *methods}
    for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
        assert not _overlap(box_a, box_b), (a, b)
    stacked = [boxes[m].y0 for m in methods[:6]]
    assert stacked == sorted(stacked)  # a higher point keeps the higher label
    assert len(ax.lines) > 2  # beyond the two dashed reference lines: leader lines to moved labels


def test_speed_accuracy_figure_leaves_a_lone_label_beside_its_point():
    fig = speed_accuracy_figure([SEMANTIC[1]], SEMANTIC_META)
    fig.canvas.draw()
    ax = fig.axes[0]
    [label] = ax.texts
    box = label.get_window_extent(fig.canvas.get_renderer())
    x, y = ax.transData.transform((3.0, 50.0))
    assert x < box.x0 < x + 40 and y < box.y0 < y + 20  # just right of and above its point
    assert len(ax.lines) == 0  # nothing moved: no leader line
    plots._pyplot().close(fig)


def test_label_offsets_stack_a_column_in_order_around_where_it_wants_to_be():
    same = [(0.0, 50.0, 100.0, 10.0, 0.0)] * 3  # three boxes wanting the same place
    assert label_offsets(same, pad=2.0) == [-12.0, 0.0, 12.0]
    assert label_offsets(same, pad=2.0) == label_offsets(same, pad=2.0)  # deterministic
    apart = [(0.0, 50.0, 100.0, 10.0, 0.0), (60.0, 90.0, 100.0, 10.0, 0.0)]  # side by side: nothing moves
    assert label_offsets(apart) == [0.0, 0.0]
    ordered = [(0.0, 50.0, 101.0, 10.0, 0.0), (0.0, 50.0, 100.0, 10.0, 0.0)]  # the higher anchor stays higher
    high, low = label_offsets(ordered, pad=0.0)
    assert 101.0 + high == pytest.approx(100.0 + low + 10.0)
