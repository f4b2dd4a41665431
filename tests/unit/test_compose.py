"""docker-compose.yml, checked without a Docker engine: the cluster is a cluster, the API key is
one key everywhere, and the server's own command line and environment, read by mmsearch's CLI
parser and settings, make a server that starts (keys on a non-loopback bind) over that cluster."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from indexer.qdrant_store import _check_cluster_settings
from mmsearch.cli import _parser
from mmsearch.settings import server_config
from server.auth import check_exposure, is_loopback
from server.keys import KeyStore, Scope

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
NODES = ("qdrant-0", "qdrant-1", "qdrant-2")
_VAR = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, as `docker compose config` does."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""

    return _VAR.sub(one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _services(compose: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    services: dict[str, Any] = _interpolate(compose["services"], env)
    return services


def test_the_compose_file_needs_the_cluster_api_key(compose: dict[str, Any]) -> None:
    with pytest.raises(KeyError, match="QDRANT_API_KEY"):
        _services(compose, {})


def test_three_qdrant_nodes_form_one_cluster_behind_one_api_key(compose: dict[str, Any]) -> None:
    services = _services(compose, {"QDRANT_API_KEY": "k3y"})
    assert set(NODES) <= set(services)
    for name in NODES:
        node = services[name]
        assert node["image"].startswith("qdrant/qdrant:")
        assert node["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert node["environment"]["QDRANT__SERVICE__API_KEY"] == "k3y"
        args = node["command"]
        assert args[args.index("--uri") + 1] == f"http://{name}:6335"
        if name != "qdrant-0":  # the others join the first node's cluster
            assert args[args.index("--bootstrap") + 1] == "http://qdrant-0:6335"
            assert services[name]["depends_on"]["qdrant-0"]["condition"] == "service_healthy"
        assert not any("6335" in str(p) for p in node.get("ports", [])), "the p2p port has no key"
        assert any(v.endswith(":/qdrant/storage") for v in node["volumes"])
    assert services["mmsearch"]["environment"]["MMSEARCH_QDRANT_API_KEY"] == "k3y"


def test_the_server_starts_with_keys_over_the_cluster(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _services(compose, {"QDRANT_API_KEY": "k3y"})["mmsearch"]
    env = {k: str(v) for k, v in server["environment"].items()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = _parser().parse_args(server["command"])
    config = server_config(args)
    assert args.command == "serve" and not is_loopback(config.host) and not config.insecure
    assert config.qdrant_url == "http://qdrant-0:6333" and config.qdrant_api_key == "k3y"
    # The keys file sits in a volume the container owns, where `keys create` writes it.
    assert config.keys_file is not None
    mounts = [v.split(":")[1] for v in server["volumes"]]
    assert any(config.keys_file.is_relative_to(m) for m in mounts)
    # Without the file the server refuses to start; with it (here, in a temp dir) it starts.
    with pytest.raises(ValueError, match="does not exist"):
        check_exposure(config)
    keys = tmp_path / "keys.json"
    KeyStore(keys).create("acme", [Scope.READ])
    monkeypatch.setenv("MMSEARCH_KEYS_FILE", str(keys))
    assert check_exposure(server_config(args)) is not None
    # The cluster settings are ones Qdrant accepts (checked before any connection is made).
    _check_cluster_settings(config.qdrant_shards, config.qdrant_replication, config.qdrant_write_consistency)
    assert (config.qdrant_shards or 1) >= len(NODES) and (config.qdrant_replication or 1) >= 2


def test_the_server_reserves_a_gpu_and_checks_its_health(compose: dict[str, Any]) -> None:
    server = _services(compose, {"QDRANT_API_KEY": "k3y"})["mmsearch"]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] >= 1
    test = server["healthcheck"]["test"]
    assert test[:3] == ["CMD", "mmsearch", "health"]
    health = _parser().parse_args(test[2:])
    port = server["command"][server["command"].index("--port") + 1]
    assert health.server == f"127.0.0.1:{port}"
    assert f"{port}:{port}" in server["ports"]
    for node in NODES:
        assert server["depends_on"][node]["condition"] == "service_healthy"
