from __future__ import annotations

import pytest

from encoders.errors import MediaDecodeError
from encoders.media import decode_image, decode_text
from tests.media import FORMATS, image_bytes


@pytest.mark.parametrize("fmt", sorted(set(FORMATS.values())))
def test_every_supported_format_decodes_to_rgb(fmt: str) -> None:
    img = decode_image(image_bytes(1, fmt))
    assert img.mode == "RGB" and img.size == (96, 80)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a recognised image format"),
        (image_bytes(2)[:150], "corrupt or truncated"),
    ],
)
def test_bad_image_bytes_raise_a_named_error(data: bytes, reason: str) -> None:
    with pytest.raises(MediaDecodeError) as exc:
        decode_image(data, name="query.image")
    assert "query.image" in str(exc.value) and reason in str(exc.value)


def test_invalid_utf8_text_is_refused() -> None:
    with pytest.raises(MediaDecodeError, match="not valid UTF-8"):
        decode_text(b"\xff\xfe\xfa", name="notes.txt")
    assert decode_text("\ufeffhé".encode()) == "hé"
