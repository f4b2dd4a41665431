"""The audio tower: log-mel spectrogram -> a configurable encoder -> projection into the shared space.

Configs are JSON with an explicit ``arch`` that picks the encoder class from AUDIO_ARCHS; the
embedding dimension comes from the bundle, so one config works with any image/text towers.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import nn

from encoders.errors import BundleError


@dataclass(frozen=True)
class AudioTowerCfg:
    arch: str
    embed_dim: int
    sample_rate: int = 16_000
    n_mels: int = 64
    n_fft: int = 400
    hop_length: int = 160  # 10 ms at 16 kHz
    window_seconds: float = 5.0  # clips longer than this are embedded as overlapping windows
    hop_seconds: float = 2.5
    width: int = 128
    layers: int = 4

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, embed_dim: int | None = None) -> AudioTowerCfg:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BundleError(f"audio tower config: unknown keys {sorted(unknown)}")
        if "arch" not in d:
            raise BundleError(
                "audio tower config: 'arch' is required (one of " + ", ".join(AUDIO_ARCHS) + ")"
            )
        if d["arch"] not in AUDIO_ARCHS:
            raise BundleError(
                f"audio tower config: unknown arch {d['arch']!r}; known: {', '.join(AUDIO_ARCHS)}"
            )
        merged = dict(d)
        if embed_dim is not None:
            merged["embed_dim"] = embed_dim
        if "embed_dim" not in merged:
            raise BundleError("audio tower config: 'embed_dim' is required")
        cfg = cls(**merged)
        if cfg.hop_seconds <= 0 or cfg.hop_seconds > cfg.window_seconds:
            raise BundleError("audio tower config: hop_seconds must be in (0, window_seconds]")
        return cfg

    @classmethod
    def load(cls, path: Path, *, embed_dim: int | None = None) -> AudioTowerCfg:
        return cls.from_dict(json.loads(path.read_text()), embed_dim=embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Conv1dMelEncoder(nn.Module):
    """1-D convolutions over time with mel bins as channels, then mean+max pooling over time.

    Cheap on CPU and indifferent to clip length, which suits windows of a few seconds."""

    def __init__(self, cfg: AudioTowerCfg) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = cfg.n_mels
        for i in range(cfg.layers):
            layers += [
                nn.Conv1d(channels, cfg.width, kernel_size=5, stride=2 if i > 0 else 1, padding=2),
                nn.BatchNorm1d(cfg.width),
                nn.GELU(),
            ]
            channels = cfg.width
        self.net = nn.Sequential(*layers)
        self.out_dim = 2 * cfg.width

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, n_mels, T) -> (B, out_dim)
        h = self.net(mel)
        return torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=-1)


class TransformerMelEncoder(nn.Module):
    """Mel frames grouped into patches of 4, a small transformer encoder, mean pooling."""

    def __init__(self, cfg: AudioTowerCfg) -> None:
        super().__init__()
        self.patch = nn.Conv1d(cfg.n_mels, cfg.width, kernel_size=4, stride=4)
        layer = nn.TransformerEncoderLayer(
            cfg.width, nhead=max(1, cfg.width // 64), batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.layers, enable_nested_tensor=False)
        self.out_dim = cfg.width

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(mel).transpose(1, 2)  # (B, T/4, width)
        return self.encoder(tokens).mean(dim=1)


AUDIO_ARCHS: dict[str, type[nn.Module]] = {
    "conv1d-mel": Conv1dMelEncoder,
    "transformer-mel": TransformerMelEncoder,
}


class AudioTower(nn.Module):
    """Waveforms (B, samples) at cfg.sample_rate -> unit vectors (B, embed_dim)."""

    def __init__(self, cfg: AudioTowerCfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels
        )
        self.encoder = AUDIO_ARCHS[cfg.arch](cfg)
        self.proj = nn.Linear(int(self.encoder.out_dim), cfg.embed_dim)  # type: ignore[arg-type]

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        mel = torch.log(self.mel(waveforms) + 1e-6)
        # Per-clip standardisation: loudness should not move a clip in the embedding space.
        mean = mel.mean(dim=(1, 2), keepdim=True)
        std = mel.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        return (mel - mean) / std

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        feats = self.proj(self.encoder(self.log_mel(waveforms)))
        return nn.functional.normalize(feats, dim=-1)


def window_bounds(n_samples: int, cfg: AudioTowerCfg) -> list[tuple[int, int]]:
    """Sample ranges of the overlapping windows covering a clip (one window if it is short)."""
    win = int(cfg.window_seconds * cfg.sample_rate)
    hop = int(cfg.hop_seconds * cfg.sample_rate)
    if n_samples <= win:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:  # the tail gets a window aligned to the end
        starts.append(n_samples - win)
    return [(s, s + win) for s in starts]
