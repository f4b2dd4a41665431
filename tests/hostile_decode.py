"""A stand-in for the image decoder, run in a decoder worker by the ingest tests: bytes that
start with HANG hang, CRASH kills the worker, anything else decodes normally."""

from __future__ import annotations

import os
import time
from typing import Any

from encoders.image_decode import FittedImage, ImageTarget, decode_fit

TARGET = "tests.hostile_decode:misbehave"


def misbehave(source: Any, target: ImageTarget) -> FittedImage:
    head = bytes(source[:5]) if not isinstance(source, str) else b""
    if head.startswith(b"HANG"):
        time.sleep(600)
    if head.startswith(b"CRASH"):
        os.abort()
    return decode_fit(source, target)
