"""Sliding-window inference: full-size output, exact blending, and the task's use of it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsseg.data.core.tiling import patch_grid
from rsseg.grid import axis_starts_aligned
from rsseg.models.sliding_window import blend_weights, padded_tile_logits, sliding_window_logits


class PerPixel(nn.Module):
    """A 1×1 convolution: its output at a pixel does not depend on the window, so any tiling is exact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("size,window,overlap", [((70, 97), 32, 8), ((64, 64), 32, 0), ((33, 130), 32, 31)])
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_blending_reproduces_a_direct_forward(size, window, overlap, blend):
    net = PerPixel()
    image = torch.randn(2, 3, *size)
    out = sliding_window_logits(net, image, window, overlap, batch_size=3, blend=blend)
    assert out.shape == (2, 5, *size)
    torch.testing.assert_close(out, net(image), rtol=1e-5, atol=1e-5)


def test_image_that_fits_equals_one_forward_on_the_padded_input():
    net = nn.Conv2d(3, 4, 5, padding=2)  # context-dependent: padding changes values near the edge
    image = torch.randn(1, 3, 20, 27)
    out = sliding_window_logits(net, image, window=32)
    padded = torch.nn.functional.pad(image, (0, 5, 0, 12))
    torch.testing.assert_close(out, net(padded)[..., :20, :27])
    exact = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(sliding_window_logits(net, exact, window=32), net(exact))


def test_edge_aligned_windows_cover_without_padding():
    assert axis_starts_aligned(1000, 512, 256) == [0, 256, 488]
    assert axis_starts_aligned(1024, 512, 512) == [0, 512]
    assert axis_starts_aligned(300, 512, 512) == [0]
    grid = patch_grid(1000, 1337, 512, 512, edge="align")
    assert max(y for y, _ in grid) + 512 == 1000 and max(x for _, x in grid) + 512 == 1337
    covered = torch.zeros(1000, 1337, dtype=torch.bool)
    for y, x in grid:
        covered[y : y + 512, x : x + 512] = True
    assert covered.all()
    with pytest.raises(ValueError, match="edge"):
        patch_grid(10, 10, 4, 4, edge="wrap")


def test_gaussian_weights_peak_in_the_centre_and_stay_positive():
    weights = blend_weights(16)
    assert weights.min() > 0 and weights[7:9, 7:9].min() == weights.max()
    with pytest.raises(ValueError, match="blend"):
        blend_weights(8, "cosine")


def test_accumulates_on_the_requested_device_and_rejects_bad_overlap():
    net = PerPixel()
    out = sliding_window_logits(net, torch.randn(1, 3, 40, 40), 16, 4, accumulate_device="cpu")
    assert out.device.type == "cpu"
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_logits(net, torch.randn(1, 3, 40, 40), 16, 16)


def test_task_evaluates_large_inputs_with_sliding_windows():
    from rsseg.tasks import SMPSegmentationTask

    net = {"class_path": "rsseg.models.SMPNet",
           "init_args": {"arch": "unet", "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}}
    task = SMPSegmentationTask(net=net, num_classes=6, inference_window=64, inference_overlap=16)
    task.eval()
    image = torch.randn(1, 3, 96, 130)
    calls = []
    task.net.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        logits = task.predict_logits(image)
    assert logits.shape == (1, 6, 96, 130)
    assert set(calls) == {(64, 64)} and len(calls) == 2 * 3


def test_padded_tiles_follow_the_released_huge_image_script():
    """D2LS's test_uavid.py: the frame goes to the bottom-right of a zero canvas of whole tiles, tiles are cut
    row by row without overlap, each is predicted alone, and the last H rows and W columns are kept. A network
    that adds its position inside the tile shows which tile every pixel came from."""
    image = torch.arange(1, 36, dtype=torch.float32).view(1, 1, 5, 7)  # 5×7 frame, tiles 3×4: pad 1 row, 1 col
    inside = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4) * 100

    def net(crops):
        return crops + inside

    logits = padded_tile_logits(net, image, (3, 4), batch_size=3)
    canvas = torch.zeros(1, 1, 6, 8)
    canvas[..., 1:, 1:] = image  # padding above and to the left
    expected = torch.cat([torch.cat([canvas[..., y : y + 3, x : x + 4] + inside for x in (0, 4)], -1)
                          for y in (0, 3)], -2)[..., 1:, 1:]
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert logits[0, 0, 0, 0] == image[0, 0, 0, 0] + 100 * 5  # frame (0, 0) sits at (1, 1) of the first tile
    assert logits[0, 0, 2, 3] == image[0, 0, 2, 3]  # frame (2, 3) starts the tile at canvas (3, 4)
    assert padded_tile_logits(net, image[..., :3, :4], (3, 4)).equal(image[..., :3, :4] + inside)  # no padding
