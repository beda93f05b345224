"""Sliding-window inference: segment an image larger than the network's input at native resolution.

Windows of ``window``×``window`` step by ``window - overlap``; the last window of each axis is aligned
with the image edge (so no pixel is left out and none is predicted from padding, unless the image is
smaller than one window, in which case it is padded and the padding cropped away). Overlapping logits
are blended with per-pixel weights (``"gaussian"``: centre-weighted, ``"uniform"``: plain average) and
accumulated on ``accumulate_device`` so that a whole 6000² tile never needs a float32 copy on the GPU.
:func:`padded_tile_logits` is the other scheme in use: GeoSeg's non-overlapping tiles over a padded frame.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rsseg.grid import axis_starts_aligned


def blend_weights(window: int, mode: str = "gaussian", sigma_scale: float = 0.125) -> torch.Tensor:
    """Per-pixel weights of one window: a separable Gaussian (σ = window·sigma_scale) or ones."""
    if mode == "uniform":
        return torch.ones(window, window)
    if mode != "gaussian":
        raise ValueError(f"unknown blend mode {mode!r}; choose 'gaussian' or 'uniform'")
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    profile = torch.exp(-0.5 * (coords / (window * sigma_scale)) ** 2)
    weights = torch.outer(profile, profile)
    return (weights / weights.max()).float().clamp_min(1e-3)


@torch.no_grad()
def sliding_window_logits(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: int,
    overlap: int = 0,
    batch_size: int = 4,
    blend: str = "gaussian",
    accumulate_device: torch.device | str | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits B×K×H×W for ``image`` (B×C×H×W) from ``net`` applied to windows of size ``window``.

    ``image`` may live on the CPU; each batch of windows moves to the device of ``net``'s parameters
    (or stays where it is for plain callables) and goes through ``preprocess`` there (e.g. uint8 →
    normalised float, so the whole image is never float on the device). Logits accumulate on
    ``accumulate_device`` (default: the image's device).
    """
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got overlap={overlap}, window={window}")
    b, _, h, w = image.shape
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    height, width = image.shape[-2:]
    stride = window - overlap
    origins = [(y, x) for y in axis_starts_aligned(height, window, stride)
               for x in axis_starts_aligned(width, window, stride)]
    net_device = _device_of(net, image.device)
    accumulate_device = torch.device(accumulate_device or image.device)
    weights = blend_weights(window, blend).to(accumulate_device)
    logits_sum: torch.Tensor | None = None
    weight_sum = torch.zeros(1, 1, height, width, device=accumulate_device)
    per_step = max(batch_size // b, 1)  # windows per forward pass, each carrying the whole batch
    for start in range(0, len(origins), per_step):
        chunk = origins[start : start + per_step]
        crops = torch.cat([image[..., y : y + window, x : x + window] for y, x in chunk]).to(net_device)
        out = net(preprocess(crops) if preprocess else crops).to(accumulate_device).float()
        if logits_sum is None:
            logits_sum = torch.zeros(b, out.shape[1], height, width, device=accumulate_device)
        for i, (y, x) in enumerate(chunk):
            logits_sum[..., y : y + window, x : x + window] += out[i * b : (i + 1) * b] * weights
            weight_sum[..., y : y + window, x : x + window] += weights
    return (logits_sum / weight_sum)[..., :h, :w]


def _device_of(net, default: torch.device) -> torch.device:
    parameters = getattr(net, "parameters", None)
    if parameters is None:
        return default
    first = next(iter(parameters()), None)
    return first.device if first is not None else default


@torch.no_grad()
def padded_tile_logits(
    net: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: tuple[int, int],
    batch_size: int = 4,
    accumulate_device: torch.device | str | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits B×K×H×W for ``image`` cut into non-overlapping ``tile`` = (height, width) tiles after padding it
    with zeros to whole tiles: the huge-image inference of GeoSeg and of D2LS's ``test_uavid.py`` (run with
    ``-ph 1152 -pw 1024``), whose ``albu.PadIfNeeded(position="bottom_right")`` puts the image in the
    bottom-right corner, so all the padding goes above and to the left, and whose tiles run row by row.

    Unlike :func:`sliding_window_logits`, edge tiles see padding and tiles never overlap, so the frame's
    predictions are the released script's; ``net`` sees each tile alone (test-time augmentation belongs
    inside it, as ttach wraps the model there). ``preprocess`` and ``accumulate_device`` as there (a uint8
    frame is padded with 0 before normalisation, as the script pads the uint8 frame).
    """
    tile_h, tile_w = tile
    if tile_h < 1 or tile_w < 1:
        raise ValueError(f"tile sizes must be positive, got {tile}")
    b, _, h, w = image.shape
    pad_h, pad_w = (-h) % tile_h, (-w) % tile_w
    padded = F.pad(image, (pad_w, 0, pad_h, 0))
    origins = [(y, x) for y in range(0, h + pad_h, tile_h) for x in range(0, w + pad_w, tile_w)]
    net_device = _device_of(net, image.device)
    accumulate_device = torch.device(accumulate_device or image.device)
    logits: torch.Tensor | None = None
    per_step = max(batch_size // b, 1)
    for start in range(0, len(origins), per_step):
        chunk = origins[start : start + per_step]
        crops = torch.cat([padded[..., y : y + tile_h, x : x + tile_w] for y, x in chunk]).to(net_device)
        out = net(preprocess(crops) if preprocess else crops).to(accumulate_device).float()
        if logits is None:
            logits = torch.zeros(b, out.shape[1], h + pad_h, w + pad_w, device=accumulate_device)
        for i, (y, x) in enumerate(chunk):
            logits[..., y : y + tile_h, x : x + tile_w] = out[i * b : (i + 1) * b]
    return logits[..., pad_h:, pad_w:]
