"""Test-time augmentation: exact inverses, hand-computed averages over views, and the task wiring."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from lightning import Trainer
from torch import nn

from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from rsseg.data.datasets.potsdam import PotsdamDataModule
from rsseg.models.tta import MODES, TTA_MODES, tta_logits, tta_transforms
from rsseg.tasks import SMPSegmentationTask

SMALL_NET = {"class_path": "rsseg.models.SMPNet",
             "init_args": {"arch": "unet", "backbone": "resnet18", "arch_kwargs": {"encoder_depth": 3,
                                                                                   "decoder_channels": [16, 8, 8]}}}
H, W = 5, 7  # non-square: a rotation swaps the axes


def _distinct(b: int = 2, c: int = 3, h: int = H, w: int = W) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w)


def _task(**kwargs) -> SMPSegmentationTask:
    return SMPSegmentationTask(net=SMALL_NET, num_classes=6, test_per_class_wfm=False, **kwargs).eval()


# --- the transforms --------------------------------------------------------------------------------


@pytest.mark.parametrize("transform", MODES["d4"], ids=lambda t: t.name)
def test_every_transform_is_undone_by_its_inverse(transform):
    x = _distinct()
    y = transform.forward(x)
    assert y.is_contiguous() and sorted(y.shape[-2:]) == sorted(x.shape[-2:])
    assert torch.equal(transform.inverse(y), x)
    assert torch.equal(transform.forward(x.to(torch.uint8)), y.to(torch.uint8))  # exact on uint8 too


def test_d4_has_eight_distinct_transforms_and_modes_are_nested():
    x = _distinct(1, 1)
    views = [t.forward(x) for t in MODES["d4"]]
    assert len(views) == 8
    assert all(not (a.shape == b.shape and torch.equal(a, b)) for a, b in itertools.combinations(views, 2))
    assert [len(tta_transforms(m)) for m in TTA_MODES] == [1, 2, 4, 8]
    assert set(MODES["hflip"]) <= set(MODES["lr"]) <= set(MODES["d4"])


# --- tta_logits on hand-made networks -------------------------------------------------------------


def test_none_is_exactly_one_plain_call():
    calls = []
    out = torch.randn(2, 4, H, W, dtype=torch.float16)

    def predict(x):
        calls.append(x)
        return out

    x = _distinct()
    result = tta_logits(predict, x, "none", [1.0])
    assert result is out and len(calls) == 1 and calls[0] is x


def _f(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """An asymmetric function of a pixel's row i and column j."""
    return 1.0 * i + 10.0 * j + 0.1 * i * j ** 2


def _rows_columns(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h, dtype=torch.float32).view(-1, 1).expand(h, w)
    return rows, torch.arange(w, dtype=torch.float32).view(1, -1).expand(h, w)


def _position_net(x: torch.Tensor) -> torch.Tensor:
    """Not equivariant: adds f of each pixel's position in the view it is given."""
    return x + _f(*_rows_columns(*x.shape[-2:]))


def _untransformed_positions(h: int, w: int) -> dict[str, torch.Tensor]:
    """Where each view puts original pixel (a, b), written out from torch's index conventions, and f there:
    hflip: x'[i, j] = x[i, W-1-j]; rot90 (counter-clockwise): x'[i, j] = x[j, W-1-i]; rot270:
    x'[i, j] = x[H-1-j, i]; transpose: x'[i, j] = x[j, i]; anti-transpose: x'[i, j] = x[H-1-j, W-1-i]."""
    a, b = _rows_columns(h, w)
    return {
        "identity": _f(a, b),
        "hflip": _f(a, w - 1 - b),
        "vflip": _f(h - 1 - a, b),
        "rot180": _f(h - 1 - a, w - 1 - b),
        "rot90": _f(w - 1 - b, a),
        "rot270": _f(b, h - 1 - a),
        "transpose": _f(b, a),
        "anti_transpose": _f(w - 1 - b, h - 1 - a),
    }


@pytest.mark.parametrize(("mode", "views"), [
    ("hflip", ["identity", "hflip"]),
    ("lr", ["identity", "hflip", "vflip", "rot180"]),
    ("d4", ["identity", "hflip", "vflip", "rot180", "rot90", "rot270", "transpose", "anti_transpose"]),
])
def test_a_position_dependent_network_averages_the_untransformed_views(mode, views):
    x = _distinct()
    positions = _untransformed_positions(H, W)
    expected = x + torch.stack([positions[v] for v in views]).mean(0)
    torch.testing.assert_close(tta_logits(_position_net, x, mode), expected, rtol=0, atol=1e-4)
    assert not torch.allclose(expected, _position_net(x))  # the views do differ


@pytest.mark.parametrize("mode", ["lr", "d4"])
def test_an_equivariant_network_is_unchanged(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, H, W)
    torch.testing.assert_close(tta_logits(conv, x, mode), conv(x), rtol=0, atol=1e-6)


def _per_pixel(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel but not linear, so resizing does not commute with it."""
    return torch.cat([x ** 2, -x], 1)


def test_scales_of_a_constant_image_give_the_constant():
    x = torch.full((1, 3, 9, 12), 0.7)
    for scales in ([0.5], [0.75, 1.0, 1.25, 1.5], [0.33, 2.0]):
        torch.testing.assert_close(tta_logits(_per_pixel, x, "lr", scales), _per_pixel(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["bicubic", "nearest"])
def test_two_scales_average_the_two_resized_paths(interpolation):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 12)
    align = False if interpolation == "bicubic" else None
    small = _per_pixel(F.interpolate(x, scale_factor=0.5, mode=interpolation, align_corners=align))
    back = F.interpolate(small, scale_factor=2.0, mode=interpolation, align_corners=align)  # ttach's Scale
    expected = (_per_pixel(x) + back) / 2
    result = tta_logits(_per_pixel, x, "none", [0.5, 1.0], interpolation)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_bad_settings_name_the_choices():
    with pytest.raises(ValueError, match="choose one of.*'d4'"):
        tta_logits(_per_pixel, _distinct(), "d8")
    with pytest.raises(ValueError, match="> 0"):
        tta_logits(_per_pixel, _distinct(), "lr", [1.0, 0.0])
    with pytest.raises(ValueError, match="> 0"):
        _task(inference_scales=[])
    with pytest.raises(ValueError, match="choose one of.*'bicubic'"):
        _task(inference_scale_interpolation="lanczos")
    with pytest.raises(ValueError, match="unknown TTA mode 'flip'"):
        _task(inference_tta="flip")


# --- through the task ---------------------------------------------------------------------------------


def test_task_without_tta_is_its_forward():
    torch.manual_seed(0)
    task = _task()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(task.predict_logits(x), task(x))


def test_task_tta_averages_its_forward_over_the_views():
    torch.manual_seed(0)
    task = _task(inference_tta="d4")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = torch.stack([t.inverse(task(t.forward(x))) for t in MODES["d4"]]).mean(0)
        torch.testing.assert_close(task.predict_logits(x), expected, rtol=1e-5, atol=1e-5)


def _equivariant_task(**kwargs) -> SMPSegmentationTask:
    task = _task(**kwargs)
    task.net = nn.Conv2d(3, 6, 1)  # per pixel: sliding windows with uniform blending reproduce it
    return task


def test_tta_with_sliding_windows_keeps_an_equivariant_network():
    torch.manual_seed(0)
    task = _equivariant_task(inference_tta="d4", inference_window=32, inference_overlap=8,
                             inference_blend="uniform")
    x = torch.randn(2, 3, 50, 75)
    with torch.no_grad():
        torch.testing.assert_close(task.predict_logits(x), task.net(x), rtol=0, atol=1e-5)
        task.hparams.inference_scales = (0.75, 1.0, 1.5)
        assert task.predict_logits(x).shape == (2, 6, 50, 75)


def test_uint8_tiles_with_scales_keep_the_normalisation_and_stay_off_the_device():
    """A resized uint8 tile is normalised window by window with the datamodule statistics: the same
    logits as TTA over the float tile normalised up front."""
    torch.manual_seed(0)
    task = _task(inference_tta="hflip", inference_scales=[0.75, 1.0], inference_window=48, inference_overlap=8)
    tile = torch.randint(0, 256, (1, 3, 90, 71), dtype=torch.uint8)
    as_float = normalise(tile[0].permute(1, 2, 0).numpy(), IMAGENET_MEAN, IMAGENET_STD)[None]
    with torch.no_grad():
        from_uint8 = task.predict_logits(tile)
        from_float = task.predict_logits(as_float)
    assert from_uint8.shape == (1, 6, 90, 71)
    torch.testing.assert_close(from_uint8, from_float, rtol=1e-4, atol=1e-4)


def test_d2ls_tta_uses_the_dynamic_inference_forward():
    from rsseg.tasks import D2LSTask
    from tests.test_d2ls_task import SMALL

    torch.manual_seed(0)
    task = D2LSTask(net=SMALL, num_classes=6, inference_tta="hflip", test_per_class_wfm=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        dynamic = task.net.forward_branches
        plain, flipped = dynamic(x).dynamic_logits, dynamic(x.flip(-1)).dynamic_logits.flip(-1)
        torch.testing.assert_close(task.predict_logits(x), (plain + flipped) / 2, rtol=1e-5, atol=1e-5)


def test_sdci_tta_goes_through_predict_logits(monkeypatch):
    from rsseg.data.datasets.isprs.labels import ISPRS_CLASSES
    from rsseg.tasks.sdci import SDCITask
    from tests.test_sdci_task import POTSDAM_PROMPTS, TINY_SDCI_NET

    task = SDCITask(num_classes=6, prompts=str(POTSDAM_PROMPTS), class_names=list(ISPRS_CLASSES),
                    net=TINY_SDCI_NET, inference_tta="hflip").eval()
    task.set_classes()
    weights = torch.arange(1.0, 6.0).view(1, 5, 1, 1)  # classes differ, so the softmax keeps the positions
    monkeypatch.setattr(task.net, "forward", lambda image: torch.softmax(_position_net(image[:, [0] * 5]) * weights, 1))
    x = torch.rand(1, 3, 6, 9)
    assert not torch.allclose(task(x), task(x.flip(-1)).flip(-1))
    with torch.no_grad():
        expected = (task(x) + task(x.flip(-1)).flip(-1)) / 2
        torch.testing.assert_close(task.predict_logits(x), expected, rtol=0, atol=1e-6)


def test_idgbr_refuses_tta():
    from rsseg.tasks import IDGBRTask

    with pytest.raises(ValueError, match="IDGBR does not support test-time augmentation"):
        IDGBRTask(num_classes=6, inference_tta="lr")
    with pytest.raises(ValueError, match="inference_scales"):
        IDGBRTask(num_classes=6, inference_scales=[0.75, 1.0])


# --- under Lightning --------------------------------------------------------------------------------


def _count_forwards(task: SMPSegmentationTask) -> list[int]:
    calls: list[int] = []
    forward = task.forward
    task.forward = lambda image: calls.append(image.shape[0]) or forward(image)
    return calls


def test_lightning_test_and_predict_run_every_view(tiny_potsdam):
    data = PotsdamDataModule(tiny_potsdam, batch_size=4, crop_size=96, num_workers=0, pin_memory=False)
    trainer = Trainer(logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    plain, augmented = _task(), _task(inference_tta="lr")
    augmented.load_state_dict(plain.state_dict())
    plain_calls, augmented_calls = _count_forwards(plain), _count_forwards(augmented)
    [plain_result] = trainer.test(plain, datamodule=data)
    [result] = trainer.test(augmented, datamodule=data)
    assert len(augmented_calls) == 4 * len(plain_calls) > 0
    assert 0.0 <= result["test/mIoU"] <= 1.0 and plain_result.keys() == result.keys()
    predictions = trainer.predict(augmented, datamodule=data)
    assert len(augmented_calls) == 4 * len(plain_calls) + 4 * len(predictions)
    assert predictions[0]["pred"].dtype == torch.uint8 and predictions[0]["pred"].ndim == 3


def test_scales_map_coordinates_by_the_scale_as_ttach():
    """ttach's Scale resizes with ``scale_factor`` (size ⌊H·s⌋, source coordinates mapped by s, not by the
    size ratio); at 10×14 and s = 0.75 the two differ, and the way back (⌊7/0.75⌋ = 9 ≠ 10) falls back to
    the exact input size."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 10, 14)
    small = _per_pixel(F.interpolate(x, scale_factor=0.75, mode="bicubic", align_corners=False))
    assert small.shape[-2:] == (7, 10)
    back = F.interpolate(small, size=(10, 14), mode="bicubic", align_corners=False)
    by_size = _per_pixel(F.interpolate(x, size=(7, 10), mode="bicubic", align_corners=False))
    assert not torch.allclose(small, by_size, atol=1e-3)  # the two mappings really differ here
    torch.testing.assert_close(tta_logits(_per_pixel, x, "none", [0.75], "bicubic"), back, rtol=0, atol=1e-6)


def test_inference_tiles_augment_each_padded_tile_alone():
    """With inference_tiles the task cuts D2LS's test_uavid.py tiles and runs the TTA inside each tile (ttach
    wraps the model there): the result is padded_tile_logits over a tile-wise TTA, not TTA of the frame."""
    from rsseg.models.sliding_window import padded_tile_logits

    task = _task(inference_tta="lr", inference_tiles=[24, 20]).eval()
    image = torch.rand(1, 3, 40, 52)
    with torch.no_grad():
        expected = padded_tile_logits(lambda t: tta_logits(task, t, "lr"), image, (24, 20), batch_size=1)
        framewise = tta_logits(task, image, "lr")
        result = task.predict_logits(image)
    torch.testing.assert_close(result, expected, rtol=0, atol=0)
    assert not torch.allclose(result, framewise, atol=1e-4)
    with pytest.raises(ValueError, match="inference_tiles"):
        _task(inference_tiles=[24])
