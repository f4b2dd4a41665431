"""mmsearch: multimodal vector search over one shared embedding space, served over gRPC."""

__version__ = "0.1.0"
