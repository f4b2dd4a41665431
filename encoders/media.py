"""Decoding media bytes into model-ready objects."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from encoders.errors import MediaDecodeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# The Pillow decoders tried on untrusted bytes: the formats above and no others. Pillow otherwise
# probes ~40 formats, some rarely exercised and one (EPS) that runs Ghostscript.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
TEXT_EXTENSIONS = frozenset({".txt", ".md"})

# Pillow's default bomb limit (~89 MP) warns first and errors only at twice that; a service
# should refuse oversized images up front instead of decoding hundreds of megapixels.
MAX_IMAGE_PIXELS = 64_000_000


def decode_image(data: bytes, *, name: str = "image") -> Image.Image:
    """Decode encoded image bytes into an RGB PIL image, fully loaded.

    Raises MediaDecodeError naming `name` when the bytes are empty, corrupt, truncated,
    not an image, or too large.
    """
    if not data:
        raise MediaDecodeError(f"{name}: empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise MediaDecodeError(
                        f"{name}: image is {width}x{height} pixels, above the {MAX_IMAGE_PIXELS} pixel limit"
                    )
                # Animated formats (gif, webp): the first frame stands for the file.
                img.seek(0)
                # load() forces the full decode, so truncated files fail here, not later in a batch.
                img.load()
                return img.convert("RGB")
    except MediaDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaDecodeError(f"{name}: image too large to decode safely ({exc})") from exc
    except Image.UnidentifiedImageError as exc:
        accepted = ", ".join(IMAGE_FORMATS)
        raise MediaDecodeError(f"{name}: not a recognised image format (accepted: {accepted})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise MediaDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc


def decode_text(data: bytes, *, name: str = "text") -> str:
    """Decode UTF-8 text bytes (a BOM is accepted). Raises MediaDecodeError on invalid UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MediaDecodeError(f"{name}: not valid UTF-8 text ({exc.reason} at byte {exc.start})") from exc
