"""Test-time augmentation (TTA): average a segmentation network's logits over flips, rotations and scales.

The transforms are the eight elements of the dihedral group D4 acting on the last two axes of a
B×C×H×W tensor, each with its exact inverse (flips and 90° rotations only permute pixels, so they are
exact on uint8 too). :func:`tta_logits` runs ``predict`` on every (scale × transform) view of the input
and averages the de-augmented logits with equal weights, as ttach's ``SegmentationTTAWrapper`` with the
``"mean"`` merger does in the released GeoSeg and D2LS test scripts (see ``docs/inference.md``).

Order, per scale s: resize the input by s, apply each transform, predict, undo the transform, average the
transforms, resize that average back by 1/s with the same interpolation (ttach's ``Scale``). Resizing
commutes with flips and 90° rotations of square inputs (and, axis by axis, of any input), so this equals
ttach's order (transform, then resize; resize back, then undo), but resizes once per scale in each
direction instead of once per view, and since resizing is linear, resizing the mean equals the mean of the
resized logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TTA_MODES = ("none", "hflip", "lr", "d4")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
DEFAULT_INTERPOLATION = "bicubic"  # what GeoSeg's and D2LS's multi-scale TTA pass to ttach.Scale


@dataclass(frozen=True)
class Transform:
    """One invertible geometric transform of the last two axes; both functions return contiguous tensors."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _vflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2)


def _rot180(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1)


def _rot90(x: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise, as ``torch.rot90`` and ttach's ``Rotate90(angles=[90])``; swaps H and W."""
    return torch.rot90(x, 1, dims=(-2, -1)).contiguous()


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 3, dims=(-2, -1)).contiguous()


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-2, -1).contiguous()


def _anti_transpose(x: torch.Tensor) -> torch.Tensor:
    """Reflection across the anti-diagonal: out[i, j] = x[H-1-j, W-1-i]."""
    return x.flip(-2, -1).transpose(-2, -1).contiguous()


IDENTITY = Transform("identity", _identity, _identity)
HFLIP = Transform("hflip", _hflip, _hflip)
VFLIP = Transform("vflip", _vflip, _vflip)
ROT180 = Transform("rot180", _rot180, _rot180)  # = hflip ∘ vflip
ROT90 = Transform("rot90", _rot90, _rot270)
ROT270 = Transform("rot270", _rot270, _rot90)
TRANSPOSE = Transform("transpose", _transpose, _transpose)  # = rot90 ∘ hflip
ANTI_TRANSPOSE = Transform("anti_transpose", _anti_transpose, _anti_transpose)  # = rot270 ∘ hflip

MODES: dict[str, tuple[Transform, ...]] = {
    "none": (IDENTITY,),
    "hflip": (IDENTITY, HFLIP),
    "lr": (IDENTITY, HFLIP, VFLIP, ROT180),  # GeoSeg's ``-t lr``: HorizontalFlip × VerticalFlip
    "d4": (IDENTITY, HFLIP, VFLIP, ROT180, ROT90, ROT270, TRANSPOSE, ANTI_TRANSPOSE),
}


def tta_transforms(mode: str) -> tuple[Transform, ...]:
    """The transforms of ``mode`` (``none``, ``hflip``, ``lr``, ``d4``), identity first."""
    if mode not in MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {TTA_MODES}")
    return MODES[mode]


def check_tta(mode: str, scales: Sequence[float], interpolation: str) -> tuple[float, ...]:
    """``scales`` as a tuple of floats after checking all three settings (ValueError naming the choices)."""
    tta_transforms(mode)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown scale interpolation {interpolation!r}; choose one of {INTERPOLATIONS}")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"TTA scales must be a non-empty list of numbers > 0, got {list(scales)}")
    return scales


def uses_tta(mode: str, scales: Sequence[float]) -> bool:
    """Whether these settings run more than the plain single pass."""
    return mode != "none" or tuple(float(s) for s in scales) != (1.0,)


def _align(interpolation: str) -> bool | None:
    return False if interpolation in ("bilinear", "bicubic") else None


def resize_image(image: torch.Tensor, scale: float, interpolation: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """``image`` resized by ``scale`` as ttach's ``Scale`` does: ``F.interpolate`` with ``scale_factor`` (the
    size is ⌊H·s⌋×⌊W·s⌋ and source coordinates map by s); unchanged at 1.

    A uint8 image is a whole tile: it is resized on the CPU into float32 in its 0–255 range (4·C·H·W·s²
    bytes of host memory), so no float copy of it lands on the accelerator; it is neither normalised nor
    clamped, since resizing commutes with the per-band affine normalisation applied afterwards (GeoSeg
    resized normalised images: the same up to rounding).
    """
    if scale == 1.0:
        return image
    if not image.is_floating_point():
        image = image.cpu().float()
    if min(int(n * scale) for n in image.shape[-2:]) < 1:
        raise ValueError(f"TTA scale {scale} shrinks a {tuple(image.shape[-2:])} input to nothing")
    return F.interpolate(image, scale_factor=scale, mode=interpolation, align_corners=_align(interpolation))


def resize_logits(logits: torch.Tensor, size: Sequence[int], scale: float,
                  interpolation: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """Logits of a view at ``scale`` back at the input's ``size``, as ttach's ``Scale.deaugment_mask``: by
    ``1/scale`` with the same interpolation. Where that misses ``size`` by rounding (ttach would fail to merge
    the views), they are resized to ``size`` exactly. Unchanged at scale 1."""
    if scale == 1.0:
        return logits
    back = F.interpolate(logits, scale_factor=1 / scale, mode=interpolation, align_corners=_align(interpolation))
    if tuple(back.shape[-2:]) != tuple(size):
        back = F.interpolate(logits, size=tuple(size), mode=interpolation, align_corners=_align(interpolation))
    return back


def _transform_mean(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                    transforms: Sequence[Transform]) -> torch.Tensor:
    """Mean over ``transforms`` of t⁻¹(predict(t(image))), accumulated in float32."""
    total: torch.Tensor | None = None
    for transform in transforms:
        logits = transform.inverse(predict(transform.forward(image))).float()
        total = logits.clone() if total is None else total.add_(logits)
    return total.div_(len(transforms))


def tta_logits(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    mode: str = "none",
    scales: Sequence[float] = (1.0,),
    interpolation: str = DEFAULT_INTERPOLATION,
) -> torch.Tensor:
    """Logits B×K×H×W of ``image`` (B×C×H×W) averaged over ``mode``'s transforms × ``scales``.

    ``predict(x)`` returns logits at x's size (a plain forward, or sliding windows); it is called
    len(transforms) × len(scales) times. ``none`` with scales (1.0,) is one plain call whose result is
    returned as it is; otherwise the result is float32 (the views are averaged in float32) and, like
    sliding-window inference, computed without gradients.
    """
    scales = check_tta(mode, scales, interpolation)
    if not uses_tta(mode, scales):
        return predict(image)
    return _augmented_logits(predict, image, tta_transforms(mode), scales, interpolation)


@torch.no_grad()
def _augmented_logits(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                      transforms: Sequence[Transform], scales: Sequence[float], interpolation: str) -> torch.Tensor:
    size = image.shape[-2:]
    total: torch.Tensor | None = None
    for scale in scales:
        view = _transform_mean(predict, resize_image(image, scale, interpolation), transforms)
        mean = resize_logits(view, size, scale, interpolation)
        total = mean if total is None else total.add_(mean.to(total.device))  # views may differ in path
    return total.div_(len(scales))
