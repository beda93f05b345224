"""Raster reading: 1-bit and 16-bit files holding 8-bit values convert losslessly; others are named errors."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from rsseg.data.core.errors import DataError
from rsseg.data.core.io import read_image


def test_one_bit_and_small_16_bit_masks_read_as_uint8(tmp_path):
    bits = np.array([[True, False], [False, True]])
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png"), bits.astype(np.uint8))
    tifffile.imwrite(tmp_path / "deep.tif", np.array([[0, 255], [50, 51]], np.uint16))
    out = read_image(tmp_path / "deep.tif")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255], [50, 51]]


def test_values_beyond_8_bits_are_refused_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "dem.tif", np.array([[0, 4000]], np.uint16))
    with pytest.raises(DataError, match=r"dem\.tif: expected 8-bit pixels, found uint16 \(values up to 4000\)"):
        read_image(tmp_path / "dem.tif")
