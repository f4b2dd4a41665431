"""Transport security and the secure default, on real server processes: TLS (the client checks the
server's certificate), mutual TLS (the server checks the client's), and a server that will not
listen beyond loopback without API keys unless told --insecure. Certificates are made here with
`cryptography`, never downloaded."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmsearch.channel import Tls
from mmsearch.client import MMSearchClient
from tests.e2e.conftest import REPO, ServerProcess, start_server
from tests.e2e.tenant_server import Keyed, start_keyed


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`mmsearch ARGS` with `env` added to an environment free of MMSEARCH_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    return subprocess.run(
        [sys.executable, "-m", "mmsearch", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**base, **(env or {})},
    )


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    out: Path,
    cn: str,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    server: bool = False,
) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `cn`: a CA when `issuer` is None, else signed by it for a server
    (localhost, 127.0.0.1) or a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    pem = Pem(out / f"{cn}.crt", out / f"{cn}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pem, cert, key


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    rogue_ca: Pem
    rogue_client: Pem  # signed by the rogue CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _issue(out, "test-ca")
    rogue, rogue_cert, rogue_key = _issue(out, "rogue-ca")
    server, _, _ = _issue(out, "server", issuer=(ca_cert, ca_key), server=True)
    client, _, _ = _issue(out, "client", issuer=(ca_cert, ca_key))
    rogue_client, _, _ = _issue(out, "rogue-client", issuer=(rogue_cert, rogue_key))
    return Pki(ca, server, client, rogue, rogue_client)


def _code(c: MMSearchClient) -> grpc.StatusCode:
    try:
        c.stats()
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        c.close()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def open_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS on every interface, without keys: allowed only because it is told --insecure."""
    data = tmp_path_factory.mktemp("tls-data")
    tls = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    srv = start_server(data, "--host", "0.0.0.0", "--insecure", *tls)
    yield srv
    srv.stop()


def _local(srv: ServerProcess) -> str:
    return f"127.0.0.1:{srv.target.rsplit(':', 1)[1]}"


def test_tls_serves_clients_that_trust_its_ca_and_no_others(open_tls: ServerProcess, pki: Pki) -> None:
    target = _local(open_tls)
    assert _code(MMSearchClient(target, tls=Tls(ca=pki.ca.cert), timeout=30)) == grpc.StatusCode.OK
    assert (
        _code(MMSearchClient(target, tls=Tls(ca=pki.ca.cert.read_bytes()), timeout=30)) == grpc.StatusCode.OK
    )
    for wrong in (
        MMSearchClient(target, timeout=5),
        MMSearchClient(target, tls=Tls(ca=pki.rogue_ca.cert), timeout=5),
    ):
        assert _code(wrong) == grpc.StatusCode.UNAVAILABLE
    assert any("WITHOUT API keys (--insecure)" in line for line in open_tls.output)


def test_the_cli_speaks_tls(open_tls: ServerProcess, pki: Pki) -> None:
    target = _local(open_tls)
    ok = run_cli("health", "--server", target, "--tls-ca", str(pki.ca.cert))
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    stats = run_cli("stats", "--server", target, "--tls-ca", str(pki.ca.cert), "--json")
    assert stats.returncode == 0 and '"points": 0' in stats.stdout, stats.stderr
    plain = run_cli("stats", "--server", target)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


@pytest.fixture(scope="module")
def mutual(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    root = tmp_path_factory.mktemp("mtls")
    flags = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    srv = start_keyed(root, {"a": ("acme", "read,write")}, *flags, "--tls-client-ca", str(pki.ca.cert))
    yield srv
    srv.stop()


def test_mutual_tls_requires_a_client_certificate_from_its_ca(mutual: Keyed, pki: Pki) -> None:
    target, key = mutual.server.target, mutual.secrets["a"]
    good = Tls(ca=pki.ca.cert, cert=pki.client.cert, key=pki.client.key)
    assert _code(MMSearchClient(target, tls=good, api_key=key, timeout=30)) == grpc.StatusCode.OK
    # The certificate admits the connection; the key still decides the call.
    assert _code(MMSearchClient(target, tls=good, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    for tls in (
        Tls(ca=pki.ca.cert),
        Tls(ca=pki.ca.cert, cert=pki.rogue_client.cert, key=pki.rogue_client.key),
    ):
        assert _code(MMSearchClient(target, tls=tls, api_key=key, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="needs its key"):
        MMSearchClient(target, tls=Tls(ca=pki.ca.cert, cert=pki.client.cert))
    cli = run_cli(
        "stats", "--server", target, "--tls-ca", str(pki.ca.cert),
        "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key), "--json",
        env={"MMSEARCH_API_KEY": key},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr


def test_a_server_beyond_loopback_without_keys_refuses_to_start(tmp_path: Path) -> None:
    proc = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--data", str(tmp_path / "d"))
    assert proc.returncode == 1
    assert "refusing to serve on 0.0.0.0 without API keys" in proc.stderr
    assert not (tmp_path / "d").exists()  # refused before the store or the model was opened
    missing = run_cli("serve", "--host", "0.0.0.0", "--keys-file", str(tmp_path / "none.json"))
    assert missing.returncode == 1 and "does not exist: create a key" in missing.stderr
