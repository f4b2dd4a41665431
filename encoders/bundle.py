"""Model bundles: everything that defines one embedding space.

A bundle is named one of three ways:

- ``tiny``: a small registered open_clip config with seeded random weights. Fast on CPU; for tests.
- ``openclip:MODEL/TAG`` or ``openclip:MODEL/PATH``: any open_clip model with a pretrained tag
  (fetched by open_clip when online) or a local weights file.
- a directory in open_clip's ``local-dir`` layout (``open_clip_config.json`` plus weights), as
  written by :func:`save_bundle` and the trainer.

Every bundle has a content-derived ``bundle_id``: a hash of its config and weights, so two
spaces that differ in any weight never share an id.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import open_clip
import torch
from PIL import Image

from encoders.audio import AudioTower, AudioTowerCfg
from encoders.calibration import Calibration
from encoders.errors import BundleError

TINY = "tiny"
OPENCLIP_PREFIX = "openclip:"
TINY_MODEL_NAME = "mmsearch-tiny"
TINY_AUDIO_CONFIG = "mmsearch-tiny-audio.json"
# Model configs shipped as package data (pyproject: tool.setuptools.package-data), read through
# importlib.resources so they are found in a wheel or zip as well as in a source checkout.
CONFIG_PACKAGE = "encoders"
CONFIG_FOLDER = "configs"
# open_clip model configs registered by register_builtin_configs(); the file is NAME.json.
BUILTIN_MODEL_CONFIGS = (TINY_MODEL_NAME,)
BUNDLE_META = "bundle.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
AUDIO_CONFIG = "audio_config.json"
AUDIO_WEIGHTS = "audio_model.safetensors"


def builtin_config_text(filename: str) -> str:
    """The text of one config file shipped in ``encoders/configs``."""
    return (resources.files(CONFIG_PACKAGE) / CONFIG_FOLDER / filename).read_text(encoding="utf-8")


def register_builtin_configs() -> None:
    """Register mmsearch's model configs (``mmsearch-tiny``) with open_clip's model registry.

    Explicit and idempotent: importing this module registers nothing; :func:`load_bundle` calls
    this, and a config open_clip already lists is left as it is, so calling it again is harmless.
    """
    known = set(open_clip.list_models())
    for name in BUILTIN_MODEL_CONFIGS:
        if name in known:
            continue
        # open_clip registers configs from files only, named after the file's stem, and reads the
        # file at once. A copy in a scratch folder works wherever the package lives (a zipped
        # wheel has no real path; importlib's as_file would rename the file).
        with tempfile.TemporaryDirectory(prefix="mmsearch-configs-") as scratch:
            path = Path(scratch) / f"{name}.json"
            path.write_text(builtin_config_text(path.name), encoding="utf-8")
            open_clip.add_model_config(path)
        if name not in open_clip.list_models():
            raise BundleError(f"open_clip did not accept the built-in model config {name!r}")


@dataclass(frozen=True)
class BundleSpec:
    """Where a bundle comes from, parsed from its name."""

    name: str
    model_name: str
    pretrained: str | None = None
    seed: int | None = None


@dataclass
class ModelBundle:
    """A loaded bundle: the model, its preprocessing and tokenizer, and its identity."""

    spec: BundleSpec
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Any
    model_cfg: dict[str, Any]
    embed_dim: int
    context_length: int
    bundle_id: str
    device: torch.device
    # The audio tower bound to this space; None when the bundle has none (plain open_clip models).
    audio: AudioTower | None = None
    calibration: Calibration = field(default_factory=Calibration)


def resolve_device(device: str | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def parse_bundle_name(name: str) -> BundleSpec:
    """Turn a bundle name or path into a spec. Raises BundleError for names it cannot resolve."""
    if name == TINY:
        return BundleSpec(name=TINY, model_name=TINY_MODEL_NAME, seed=0)
    if name.startswith(OPENCLIP_PREFIX):
        model, _, tag = name[len(OPENCLIP_PREFIX) :].partition("/")
        if not model or not tag:
            raise BundleError(
                f"bundle {name!r}: expected openclip:MODEL/TAG or openclip:MODEL/PATH, "
                "e.g. openclip:ViT-B-32/laion2b_s34b_b79k"
            )
        return BundleSpec(name=name, model_name=model, pretrained=tag)
    path = Path(name)
    if path.is_dir():
        if not (path / OPEN_CLIP_CONFIG).is_file():
            raise BundleError(f"bundle directory {path} has no {OPEN_CLIP_CONFIG}")
        return BundleSpec(name=str(path.resolve()), model_name=f"local-dir:{path.resolve()}")
    raise BundleError(
        f"unknown bundle {name!r}: use 'tiny', 'openclip:MODEL/TAG' (or a weights file path), "
        "or a bundle directory"
    )


def _model_config(spec: BundleSpec) -> dict[str, Any]:
    if spec.model_name.startswith("local-dir:"):
        cfg = json.loads((Path(spec.name) / OPEN_CLIP_CONFIG).read_text())
        return dict(cfg["model_cfg"])
    cfg = open_clip.get_model_config(spec.model_name)
    if cfg is None:
        raise BundleError(f"open_clip has no model config named {spec.model_name!r}")
    return dict(cfg)


def compute_bundle_id(
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    audio: AudioTower | None = None,
) -> str:
    """Hash of configs, preprocessing and every weight: equal ids mean the same embedding space."""
    h = hashlib.sha256()
    audio_cfg = audio.cfg.to_dict() if audio is not None else None
    h.update(
        json.dumps(
            {"model": model_cfg, "preprocess": preprocess_cfg, "audio": audio_cfg}, sort_keys=True
        ).encode()
    )
    modules: list[tuple[str, torch.nn.Module]] = [("", model)]
    if audio is not None:
        modules.append(("audio.", audio))
    for prefix, module in modules:
        for key, tensor in sorted(module.state_dict().items()):
            h.update((prefix + key).encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "b" + h.hexdigest()[:23]


def _load_audio_tower(spec: BundleSpec, embed_dim: int) -> AudioTower | None:
    if spec.name == TINY:
        cfg = AudioTowerCfg.from_dict(json.loads(builtin_config_text(TINY_AUDIO_CONFIG)), embed_dim=embed_dim)
        # Seeded random weights, drawn from a forked generator: the caller's RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            return AudioTower(cfg).eval()
    if not spec.model_name.startswith("local-dir:"):
        return None
    root = Path(spec.name)
    if not (root / AUDIO_CONFIG).is_file():
        return None
    cfg = AudioTowerCfg.load(root / AUDIO_CONFIG)
    if cfg.embed_dim != embed_dim:
        raise BundleError(
            f"bundle {root}: audio tower embeds into {cfg.embed_dim} dims, the image/text towers {embed_dim}"
        )
    weights = root / AUDIO_WEIGHTS
    if not weights.is_file():
        raise BundleError(f"bundle {root} has {AUDIO_CONFIG} but no {AUDIO_WEIGHTS}")
    from safetensors.torch import load_file

    tower = AudioTower(cfg)
    try:
        tower.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise BundleError(f"bundle {root}: audio weights do not fit {AUDIO_CONFIG}: {exc}") from exc
    return tower.eval()


def load_bundle(name: str, device: str | None = None) -> ModelBundle:
    """Load a bundle by name or directory. Raises BundleError with what to do when it cannot."""
    spec = parse_bundle_name(name)
    register_builtin_configs()
    if spec.pretrained and not Path(spec.pretrained).is_file() and "/" in spec.pretrained:
        raise BundleError(f"bundle {name!r}: weights file {spec.pretrained} does not exist")
    try:
        # Model init draws from a forked generator (seeded for tiny), so loading a bundle leaves
        # the caller's global RNG state as it was. The model is built on the CPU, so only the
        # CPU generator is forked.
        with torch.random.fork_rng(devices=[]):
            if spec.seed is not None:
                torch.manual_seed(spec.seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model_name, pretrained=spec.pretrained, device="cpu"
            )
    except (RuntimeError, OSError, ValueError) as exc:
        hint = ""
        if spec.pretrained and not Path(spec.pretrained).is_file():
            hint = " (no network? pass a local weights file: openclip:MODEL/PATH/TO/weights.bin)"
        raise BundleError(f"bundle {name!r} could not be loaded: {exc}{hint}") from exc
    model.eval()
    model_cfg = _model_config(spec)
    embed_dim = int(model_cfg["embed_dim"])
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
    audio = _load_audio_tower(spec, embed_dim)
    bundle_id = compute_bundle_id(model, model_cfg, preprocess_cfg, audio)
    dev = resolve_device(device)
    model.to(dev)
    if audio is not None:
        audio.to(dev)
    tokenizer = open_clip.get_tokenizer(spec.model_name)
    return ModelBundle(
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        embed_dim=embed_dim,
        context_length=int(getattr(tokenizer, "context_length", 77)),
        bundle_id=bundle_id,
        device=dev,
        audio=audio,
        calibration=Calibration.load(Path(spec.name))
        if spec.model_name.startswith("local-dir:")
        else Calibration(),
    )


def save_bundle(bundle: ModelBundle, out_dir: str | Path) -> Path:
    """Write a bundle directory (open_clip local-dir layout) that :func:`load_bundle` reads back."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(bundle.model))
    (out / OPEN_CLIP_CONFIG).write_text(
        json.dumps({"model_cfg": bundle.model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
    )
    state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    if bundle.audio is not None:
        (out / AUDIO_CONFIG).write_text(json.dumps(bundle.audio.cfg.to_dict(), indent=2))
        audio_state = {k: v.detach().to("cpu").contiguous() for k, v in bundle.audio.state_dict().items()}
        save_file(audio_state, str(out / AUDIO_WEIGHTS))
    if bundle.calibration.maps:
        bundle.calibration.save(out)
    (out / BUNDLE_META).write_text(json.dumps({"source": bundle.spec.name, "bundle_id": bundle.bundle_id}))
    return out
