from __future__ import annotations

import json
from pathlib import Path

from mmsearch.demo import STARTER_CONFIG, starter_marker
from trainer.config import load_config, packaged_config


def test_the_starter_bundle_marker_survives_a_round_trip(tmp_path: Path) -> None:
    # The demo retrains when the marker on disk differs from this: a tuple in the config must
    # not make every run look changed.
    (tmp_path / "sample.json").write_text(json.dumps({"seed": 0, "images": 1797}))
    config = load_config(packaged_config(STARTER_CONFIG)).to_json()
    assert isinstance(config["train"], tuple)
    written = starter_marker(config, tmp_path)
    (tmp_path / "marker.json").write_text(json.dumps(written))
    assert json.loads((tmp_path / "marker.json").read_text()) == starter_marker(config, tmp_path)
    other = {**config, "steps": config["steps"] + 1}
    assert starter_marker(other, tmp_path) != written
