import io
import zlib

import numpy as np
import pytest
from PIL import Image

from t2i_data.pngio import decode_image, encode_png, encoder_id


@pytest.mark.parametrize("shape", [(128, 128, 3), (7, 13, 3), (9, 4)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_pillow_decodes_exact_pixels(shape, level):
    px = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(px, level)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == ("RGB" if len(shape) == 3 else "L")
        assert np.array_equal(np.asarray(im), px)
    assert np.array_equal(decode_image(data)[..., 0] if len(shape) == 2 else decode_image(data), px)


def test_bytes_are_deterministic_and_named_by_encoder_id():
    px = np.zeros((16, 16, 3), np.uint8)
    px[3:9, 2:5, 1] = 200
    assert encode_png(px) == encode_png(px.copy())
    assert encoder_id(1) == f"t2i-png/1 filter=0 strategy=rle level=1 zlib-{zlib.ZLIB_RUNTIME_VERSION}"


def test_rejects_wrong_dtype_and_channels():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        encode_png(np.zeros((2, 2, 4), np.uint8))

