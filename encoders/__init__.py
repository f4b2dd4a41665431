"""Models and media decoding: the lowest layer. Imports no qdrant and no grpc."""

from encoders.modality import Modality

__all__ = ["Modality"]
