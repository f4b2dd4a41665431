"""The CLI's side of access: `mmsearch keys create|list|revoke`, and the key and TLS flags of the
commands that talk to a server. Light: no model code is imported on these paths."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from mmsearch import client as mc
from mmsearch.channel import Tls

API_KEY_ENV = "MMSEARCH_API_KEY"
KEYS_FILE_ENV = "MMSEARCH_KEYS_FILE"


def add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (a server's keys file)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="a new key; the key is printed once and stored hashed")
    create.add_argument("--tenant", required=True, help="the tenant whose data the key reads and writes")
    create.add_argument("--scopes", required=True, help="comma-separated: read, write, admin")
    create.add_argument("--name", default="", help="a label to tell keys apart in `keys list`")
    create.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="every key: id, tenant, scopes, created, revoked (no secrets)")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a key by id (a running server sees it at once)")
    revoke.add_argument("key_id")
    for action in (create, listing, revoke):
        action.add_argument("--keys-file", type=Path, help=f"the keys file (default ${KEYS_FILE_ENV})")


def run_keys(args: argparse.Namespace) -> int:
    from server.keys import KeyStore, parse_scopes

    path = args.keys_file or os.environ.get(KEYS_FILE_ENV)
    if not path:
        raise ValueError(f"give --keys-file FILE (or set {KEYS_FILE_ENV})")
    store = KeyStore(path)
    if args.keys_command == "create":
        record, secret = store.create(args.tenant, parse_scopes(args.scopes), name=args.name)
        if args.json:
            print(json.dumps({**_public(record.to_json()), "key": secret}))
        else:
            print(secret)
            print(
                f"key {record.id} for tenant {record.tenant} ({','.join(record.scopes)}): store it now, "
                "it is not shown again",
                file=sys.stderr,
            )
        return 0
    if args.keys_command == "list":
        keys = [_public(k.to_json()) for k in store.records()]
        if args.json:
            print(json.dumps({"keys": keys}))
            return 0
        for k in keys:
            state = f"revoked {k['revoked']}" if k["revoked"] else "active"
            scopes = ",".join(k["scopes"])
            print(f"{k['id']}  {k['tenant']:<20} {scopes:<16} {k['created']}  {state}  {k['name']}")
        return 0
    record = store.revoke(args.key_id)
    print(f"revoked {record.id} (tenant {record.tenant}) at {record.revoked}")
    return 0


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "sha256"}


def add_client_flags(p: argparse.ArgumentParser) -> None:
    """TLS flags of a command that can talk to a server; the key comes from $MMSEARCH_API_KEY
    (a flag would show it in `ps` and the shell history)."""
    p.add_argument("--tls", action="store_true", help="connect over TLS, trusting the system's roots")
    p.add_argument("--tls-ca", type=Path, help="connect over TLS, trusting this CA certificate (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", type=Path, help="the client certificate's key (PEM)")


def connect(args: argparse.Namespace, **kwargs: Any) -> mc.MMSearchClient:
    """A client for `args.server` with the key from the environment and the TLS flags."""
    ca, cert, key = (getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key"))
    wants_tls = getattr(args, "tls", False) or any(v is not None for v in (ca, cert, key))
    tls = Tls(ca=ca, cert=cert, key=key) if wants_tls else None
    api_key = os.environ.get(API_KEY_ENV) or None
    return mc.MMSearchClient(args.server, api_key=api_key, tls=tls, **kwargs)
