"""The bench's pictures: colours of masks and error maps, and which files each row set gives."""

from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from rsseg.bench.plots import (
    CORRECT_COLOUR,
    WRONG_COLOUR,
    colourise,
    error_map,
    ignore_colour,
    qualitative_panel,
    write_plots,
)

ISPRS = [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)]
SEMANTIC = [
    {"method": "majority class", "mIoU": 0.2, "mF1": 0.3, "OA": 0.6, "Kappa": 0.0, "IoU/road": 0.6, "params": 0},
    {"method": "unet", "mIoU": 0.5, "mF1": 0.6, "OA": 0.8, "Kappa": 0.5, "boundary_WF": 0.3, "IoU/road": 0.7,
     "IoU/car": 0.3, "params": 14_000_000, "inference_img_per_s": 3.0},
    {"method": "d2ls", "failed": "RuntimeError: out of memory"},
    {"method": "idgbr(unet)", "mIoU": 0.55, "mF1": 0.65, "OA": 0.82, "Kappa": 0.55, "boundary_WF": 0.4,
     "IoU/road": 0.72, "IoU/car": 0.38, "params": 900_000_000, "inference_img_per_s": 0.05},
]
REFERRING = [
    {"method": "all target", "oIoU": 0.2, "mIoU": 0.2, **{f"Pr@{t}": 0.0 for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
     "params": 0},
    {"method": "danet", "oIoU": 0.6, "mIoU": 0.55, **{f"Pr@{t}": 0.5 for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
     "params": 2_000_000, "inference_img_per_s": 5.0},
]


def test_colourise_uses_the_palette_and_a_free_colour_for_ignore():
    mask = np.array([[0, 1, 2], [3, 4, 5], [255, 0, 7]])
    out = colourise(mask, ISPRS)
    assert out.dtype == np.uint8 and out.shape == (3, 3, 3)
    for (i, j), label in np.ndenumerate(mask):
        expected = ISPRS[label] if label < len(ISPRS) else ignore_colour(ISPRS)
        assert tuple(out[i, j]) == expected
    assert ignore_colour(ISPRS) not in ISPRS  # impervious surfaces are white: ignore must not be
    assert ignore_colour([(0, 0, 0), (255, 255, 255)]) not in [(0, 0, 0), (255, 255, 255)]


def test_error_map_marks_exactly_the_wrong_scored_pixels():
    target = np.array([[0, 1], [255, 1]])
    pred = np.array([[0, 0], [1, 1]])
    out = error_map(pred, target, ignore=(7, 7, 7))
    assert tuple(out[0, 0]) == CORRECT_COLOUR and tuple(out[1, 1]) == CORRECT_COLOUR
    assert tuple(out[0, 1]) == WRONG_COLOUR
    assert tuple(out[1, 0]) == (7, 7, 7)  # ignored, whatever the prediction


def test_semantic_plots(tmp_path):
    meta = {"dataset": "potsdam", "profile": "smoke", "task": "semantic", "synthetic": True}
    written = {p.name for p in write_plots(tmp_path, SEMANTIC, meta)}
    bars = {f"bar_{k}.png" for k in ("mIoU", "mF1", "OA", "Kappa", "boundary_WF")}
    assert written == bars | {"per_class_iou.png", "speed_accuracy.png"}
    assert all((tmp_path / name).stat().st_size > 0 for name in written)


def test_referring_plots_have_no_heat_map_and_file_safe_names(tmp_path):
    meta = {"dataset": "refsegrs", "profile": "smoke", "task": "referring"}
    written = {p.name for p in write_plots(tmp_path, REFERRING, meta)}
    assert "bar_Pr0.5.png" in written and "bar_oIoU.png" in written and "speed_accuracy.png" in written
    assert "per_class_iou.png" not in written


def test_plots_need_their_data(tmp_path):
    meta = {"dataset": "x", "profile": "smoke", "task": "semantic"}
    written = write_plots(tmp_path, [SEMANTIC[0], SEMANTIC[2]], meta)  # a reference row and a failed one
    assert "speed_accuracy.png" not in {p.name for p in written}  # nothing was timed


def test_panel_has_a_column_pair_per_method(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, (32, 32))
    target[:4] = 255

    def sample(methods):
        return {"id": "2_13_0_0", "image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "target": target,
                "predictions": {m: rng.integers(0, 6, (32, 32)) for m in methods}}

    one = qualitative_panel(tmp_path / "one.png", [sample(["unet"])] * 2, ISPRS, [str(i) for i in range(6)])
    three = qualitative_panel(tmp_path / "three.png", [sample(["unet", "d2ls", "idgbr(unet)"])] * 2, ISPRS,
                              [str(i) for i in range(6)])
    height_one, width_one = imread(one).shape[:2]
    height_three, width_three = imread(three).shape[:2]
    assert height_one == height_three and width_three / width_one == (2 + 6) / (2 + 2)
