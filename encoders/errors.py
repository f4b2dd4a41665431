"""Errors raised by the encoder layer. Each message names the input and what is wrong with it."""


class EncoderError(Exception):
    """Base class for encoder-layer errors."""


class MediaDecodeError(EncoderError):
    """Media bytes could not be decoded (corrupt, truncated, or not the claimed format)."""


class BundleError(EncoderError):
    """A model bundle could not be found or loaded."""
