"""The shared exact RGB decoder: palette index for known colours, ignore and 'unmatched' for the rest."""

import numpy as np
import pytest

from rsseg.data.core.palette import decode_colours, pack_rgb


def test_exact_rgb_matching_with_unmatched_pixels_reported():
    palette = [(255, 0, 0), (0, 0, 255), (0, 0, 0)]
    rgb = np.array([[[255, 0, 0], [0, 0, 255], [0, 0, 0]], [[0, 0, 254], [1, 0, 0], [255, 0, 0]]], np.uint8)
    mask, matched, codes = decode_colours(rgb, palette, ignore_index=255)
    np.testing.assert_array_equal(mask, [[0, 1, 2], [255, 255, 0]])
    np.testing.assert_array_equal(matched, [[True, True, True], [False, False, True]])
    assert codes[0, 0] == pack_rgb((255, 0, 0)) == 0xFF0000  # RGB order: red is not blue
    with pytest.raises(ValueError, match="H×W×3"):
        decode_colours(rgb[..., 0], palette)
