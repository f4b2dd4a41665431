"""A real server with API keys, and a client per key: for the tenant and TLS tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.channel import Tls
from mmsearch.client import MMSearchClient
from server.keys import KeyStore, parse_scopes
from tests.e2e.conftest import ServerProcess, start_server


@dataclass
class Keyed:
    """A server and the keys made for it, by label."""

    server: ServerProcess
    keys_file: Path
    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    tls: Tls | None = None
    clients: list[MMSearchClient] = field(default_factory=list)

    def client(self, label: str | None, **kwargs: Any) -> MMSearchClient:
        """A client sending the key called `label` (None: no key)."""
        key = self.secrets[label] if label is not None else None
        c = MMSearchClient(self.server.target, api_key=key, tls=kwargs.pop("tls", self.tls), **kwargs)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()


def make_keys(keys_file: Path, specs: Mapping[str, tuple[str, str]]) -> tuple[dict[str, str], dict[str, str]]:
    """Keys for label -> (tenant, "scope,scope"): their secrets and ids by label."""
    store = KeyStore(keys_file)
    secrets, ids = {}, {}
    for label, (tenant, scopes) in specs.items():
        record, secret = store.create(tenant, parse_scopes(scopes), name=label)
        secrets[label], ids[label] = secret, record.id
    return secrets, ids


def start_keyed(
    root: Path,
    specs: Mapping[str, tuple[str, str]],
    *extra: str,
    data: Path | None = None,
    tls: Tls | None = None,
    env: dict[str, str] | None = None,
) -> Keyed:
    keys_file = root / "keys.json"
    secrets, ids = make_keys(keys_file, specs)
    server = start_server(data or root / "data", "--keys-file", str(keys_file), *extra, env=env)
    return Keyed(server, keys_file, secrets, ids, tls)


def item_ids(resp: Any) -> list[str]:
    return [i for r in resp.results for i in r.ids]


def texts(labels: Sequence[str]) -> list[str]:
    return [f"a photo of {label}" for label in labels]
