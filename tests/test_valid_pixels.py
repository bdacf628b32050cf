"""Valid pixels stay valid: a computed value that rounds or clips onto the nodata value moves to
the nearest representable value that is not nodata; nodata px stay the fill."""

import numpy as np
import pytest

from tiler.raster.values import to_pixels

CASES = [  # dtype, nodata, computed values (all valid)
    ("uint8", 0, [-3.0, 0.2, 0.49, 7.0]),
    ("uint8", 255, [254.6, 300.0, 255.0, 3.0]),
    ("uint16", 0, [-0.4, 0.3, 12.0]),
    ("int16", -9999, [-9999.4, -9998.6, -10001.0, 3.0]),
    ("int16", -32768, [-40000.0, -32768.2, 5.0]),
    ("int32", 7, [6.6, 7.4, 7.0]),
    ("float32", 0.0, [0.0, -0.0, 1.5]),
    ("float64", -1.0, [-1.0, -2.0, 3.0]),
]


@pytest.mark.parametrize("dtype, nodata, computed", CASES)
def test_valid_px_never_become_nodata(dtype, nodata, computed):
    values = np.array(computed, dtype=np.float64)[None, None]
    valid = np.ones_like(values, dtype=bool)
    pixels = to_pixels(values.copy(), valid, dtype, nodata, nodata)
    assert pixels.dtype == np.dtype(dtype)
    assert not (pixels == nodata).any()
    plain = to_pixels(values.copy(), valid, dtype, nodata)  # what rounding alone gives
    moved = plain == nodata
    assert np.array_equal(pixels[~moved], plain[~moved])  # only the hits move...
    steps = np.abs(pixels[moved].astype(np.float64) - np.float64(nodata))
    assert (steps > 0).all() and (steps <= 1).all()  # ...by one representable step


def test_nodata_px_keep_the_fill():
    values = np.array([[[5.0, 0.1, 9.0]]])
    valid = np.array([[[True, True, False]]])
    assert to_pixels(values, valid, "uint16", 0, 0).tolist() == [[[5, 1, 0]]]
