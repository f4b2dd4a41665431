"""One Embedder per device: copies of a bundle's towers on other GPUs, for bulk encoding.

Each copy shares the bundle's identity, preprocessing, tokenizer and the decoder pool, and owns
its weights on its device; a thread per copy drives it (CUDA kernels run without the GIL).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch

from encoders.embed import Embedder
from encoders.encoder import Encoder


def encode_devices(embedder: Embedder, requested: Sequence[str] = ()) -> list[torch.device]:
    """The devices to encode on: `requested`, or every visible GPU when the model is on CUDA,
    or the model's own device."""
    if requested:
        return [torch.device(d) for d in requested]
    device = embedder.encoder.bundle.device
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [device]


def replicate(embedder: Embedder, devices: Sequence[torch.device]) -> list[Embedder]:
    """`embedder` itself for its own device, a copy of its towers for each other one."""
    bundle = embedder.encoder.bundle
    out = []
    for device in devices:
        if device == bundle.device:
            out.append(embedder)
            continue
        model = copy.deepcopy(bundle.model).to(device)
        audio = copy.deepcopy(bundle.audio).to(device) if bundle.audio is not None else None
        encoder = Encoder(
            replace(bundle, model=model, audio=audio, device=device), embedder.encoder.batch_size
        )
        out.append(Embedder(encoder, embedder.decoder, segment_seconds=embedder.segment_seconds))
    return out
