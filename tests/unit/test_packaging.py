"""A built wheel carries what the packages read at run time, and the ``tiny`` bundle loads from it.

The wheel is built from a copy of exactly what the Dockerfile copies into the image, so a file
the image would lack fails here too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from encoders.bundle import ModelBundle

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile copies into the image (keep the two lists in step).
IMAGE_FILES = ("pyproject.toml", "README.md")
IMAGE_PACKAGES = ("mmsearch", "encoders", "indexer", "server", "trainer")
RUNTIME_DATA = (
    "encoders/configs/mmsearch-tiny.json",
    "encoders/configs/mmsearch-tiny-audio.json",
    "trainer/configs/sample.json",
    "mmsearch/v1/search_pb2.pyi",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in IMAGE_FILES:
        shutil.copy2(ROOT / name, src / name)
    for pkg in IMAGE_PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    # No build isolation: setuptools comes from the venv, so the build needs no network.
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", out, src], check=True, timeout=180)
    (built,) = out.glob("mmsearch-*.whl")
    return built


def test_wheel_ships_the_runtime_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in RUNTIME_DATA if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert {n.split("/")[0] for n in names} >= set(IMAGE_PACKAGES)
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mmsearch = mmsearch.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_tiny_bundle_loads_from_the_wheel_alone(
    wheel: Path, tmp_path: Path, tiny_bundle: ModelBundle
) -> None:
    # The wheel itself (a zip) is the only place the packages can come from: the checkout is not
    # on the path and the working directory is elsewhere, so configs must be read as package
    # resources, not beside a source file.
    code = (
        "import json\n"
        "from encoders import bundle\n"
        "b = bundle.load_bundle('tiny', device='cpu')\n"
        "print(json.dumps({'file': bundle.__file__, 'bundle_id': b.bundle_id, 'dim': b.embed_dim,\n"
        "                  'audio': b.audio is not None}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(wheel)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(wheel)), out["file"]
    assert out["dim"] == 64 and out["audio"]
    # The same space as from the source tree: stored indexes record this id.
    assert out["bundle_id"] == tiny_bundle.bundle_id
