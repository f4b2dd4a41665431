"""The `mmsearch` command: serve, ingest, search, stats."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from mmsearch import cli_auth, cli_ingest, cli_reindex, cli_train, ray_cli
from mmsearch import client as mc

if TYPE_CHECKING:
    from server.services import Services


def _add_store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="embedded store directory (default: data, or $MMSEARCH_DATA)")
    p.add_argument("--bundle", help="model bundle: tiny, openclip:MODEL/TAG, or a bundle directory")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--qdrant-url", help="use a Qdrant server at this URL instead of the embedded store")
    p.add_argument("--collection", help="Qdrant collection name (server store only)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description="Multimodal vector search over gRPC.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    _add_store_flags(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    serve.add_argument("--max-top-k", type=int, help="largest top_k a query may ask for (default 1000)")
    serve.add_argument(
        "--keys-file", type=Path, help="API keys file: every call needs a key ($MMSEARCH_KEYS_FILE)"
    )
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without API keys")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate chain (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)"
    )
    serve.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (0: a free one; default off)"
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as text (default) or one JSON object each"
    )

    ingest = sub.add_parser("ingest", help="index a folder (or one file) of images, texts, audio and video")
    ingest.add_argument("path", type=Path, nargs="?", help="a folder or one file (or give --manifest)")
    ingest.add_argument("--server", help="HOST:PORT of a running server; default writes the local store")
    cli_auth.add_client_flags(ingest)
    _add_store_flags(ingest)
    ingest.add_argument(
        "--batch-size", type=int, help="items per forward pass (default 64; with --server, the server's own)"
    )
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    ingest.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    cli_ingest.add_local_flags(ingest)
    ray_cli.add_ray_flags(ingest)

    search = sub.add_parser("search", help="query by text, image, audio, video or stored id")
    search.add_argument("--server", help="HOST:PORT of a running server; default opens the local store")
    cli_auth.add_client_flags(search)
    _add_store_flags(search)
    q = search.add_mutually_exclusive_group(required=True)
    q.add_argument("--text")
    q.add_argument("--image", type=Path)
    q.add_argument("--audio", type=Path)
    q.add_argument("--video", type=Path)
    q.add_argument("--id", help="a stored point id (or caller id) whose vector is the query")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--modality", action="append", default=[], help="restrict results (repeatable)")
    search.add_argument(
        "--filter", action="append", default=[], help="KEY=VALUE, KEY!=VALUE, KEY>=N ... (repeatable)"
    )
    search.add_argument("--threshold", type=float, help="minimum cosine score")
    search.add_argument("--group-size", type=int, default=1, help="hits per media file (default 1)")
    search.add_argument(
        "--negative-id", action="append", default=[], help="push results away from this stored id"
    )
    search.add_argument("--oversampling", type=float, help="ANN candidates per result (default 4)")
    search.add_argument("--quantized", action="store_true", help="ANN pass over the int8-quantized vectors")
    search.add_argument("--no-rescore", action="store_true", help="skip re-scoring on full vectors")
    search.add_argument(
        "--mmr", type=float, metavar="LAMBDA", help="MMR diversity: 1 relevance only .. 0 diversity"
    )
    search.add_argument("--calibrated-threshold", type=float, help="minimum calibrated score (0..1)")

    mine = sub.add_parser("mine", help="hard negatives for query inputs or positive ids (server)")
    mine.add_argument("--server", required=True, help="HOST:PORT of a running server")
    cli_auth.add_client_flags(mine)
    mine.add_argument("--text", action="append", default=[])
    mine.add_argument("--image", type=Path, action="append", default=[])
    mine.add_argument("--audio", type=Path, action="append", default=[])
    mine.add_argument("--video", type=Path, action="append", default=[])
    mine.add_argument("--positive", action="append", default=[], help="a known positive's id (repeatable)")
    mine.add_argument("--k", type=int, default=10)
    mine.add_argument("--modality", action="append", default=[])
    mine.add_argument("--filter", action="append", default=[])
    mine.add_argument("--group-key", default="", help="payload key marking the anchors' group, e.g. label")
    mine.add_argument("--group", default="", help="the anchors' group (default: read from the positives)")
    mine.add_argument(
        "--max-fraction", type=float, help="drop candidates above this fraction of the positive"
    )
    mine.add_argument("--json", action="store_true")
    search.add_argument("--json", action="store_true")

    stats = sub.add_parser("stats", help="index size and bundle")
    stats.add_argument("--server", help="HOST:PORT of a running server; default opens the local store")
    cli_auth.add_client_flags(stats)
    _add_store_flags(stats)
    stats.add_argument("--json", action="store_true")

    health = sub.add_parser("health", help="exit 0 when a server reports SERVING (container health checks)")
    health.add_argument("--server", required=True, help="HOST:PORT of a running server")
    cli_auth.add_client_flags(health)
    health.add_argument("--service", default="", help="a service name (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")

    cli_reindex.add_parser(sub, _add_store_flags, cli_auth.add_client_flags)
    cli_train.add_parsers(sub)
    cli_auth.add_keys_parser(sub)
    demo = sub.add_parser("demo", help="sample library -> train -> ingest -> serve -> cross-modal queries")
    demo.add_argument("--dir", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    demo.add_argument("--retrain", action="store_true", help="train the starter bundle even if cached")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before torch loads OpenMP: its threads sleep at a barrier instead of spinning. Decoder
    # workers share the cores with the model, and spinning threads then wait on descheduled
    # ones for whole time slices (measured on 2 cores: a batch of 64 images 7x slower).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parser().parse_args(argv)
    # Libraries (open_clip logs every loading step at INFO) stay at WARNING; ours at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmsearch").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # open_clip logs a warning for every randomly initialised model; the tiny bundle is one by design.
    logging.getLogger().handlers[0].addFilter(lambda r: "initialized randomly" not in r.getMessage())
    try:
        handler = {
            "serve": _serve,
            "ingest": _ingest,
            "search": _search,
            "stats": _stats,
            "sample-data": cli_train.sample_data,
            "train": cli_train.run_train,
            "eval": cli_train.run_eval,
            "demo": _demo,
            "mine": _mine,
            "health": _health,
            "keys": cli_auth.run_keys,
            "reindex": cli_reindex.run,
        }[args.command]
        return handler(args)
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"mmsearch: {code.name if code else 'ERROR'}: {exc.details()}", file=sys.stderr)
        return 1
    except _user_errors() as exc:
        print(f"mmsearch: {exc}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors reported as one line. Called only once an exception is raised (an ``except``
    clause is evaluated lazily), so the ``--server`` commands never load the store modules."""
    from encoders.errors import EncoderError
    from indexer.ingest_flow import IngestAborted
    from indexer.journal import JournalError
    from indexer.manifest import ManifestError
    from indexer.store import StoreError

    return (StoreError, OSError, ValueError, EncoderError, IngestAborted, JournalError, ManifestError)


# Local-mode handlers import the server, indexer and model code where they run: the
# ``--server`` paths load only the gRPC client (no torch, no open_clip) and start fast.
def _serve(args: argparse.Namespace) -> int:
    from mmsearch.settings import server_config
    from server.auth import check_exposure

    config = server_config(args)
    check_exposure(config, warn=False)  # a refused setting fails before the model code loads

    from server.app import run

    def ready(port: int) -> None:
        where = config.qdrant_url or str(config.data_dir)
        print(f"mmsearch serving on {config.host}:{port} (bundle {config.bundle}, store {where})", flush=True)

    run(config, on_ready=ready)
    return 0


def _local_services(args: argparse.Namespace) -> Services:
    from mmsearch.settings import server_config
    from server.services import build_services

    return build_services(server_config(args))


def _ingest(args: argparse.Namespace) -> int:
    if args.ray is not None:
        summary = ray_cli.run_ray(args)
    elif args.server:
        from mmsearch.remote_ingest import run_remote

        summary = run_remote(args)
    else:
        summary = cli_ingest.run_local(args)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        cli_ingest.print_summary(summary)
    return 0


def _search(args: argparse.Namespace) -> int:
    media = {k: getattr(args, k).read_bytes() for k in ("image", "audio", "video") if getattr(args, k)}
    request = mc.pb.SearchRequest(
        top_k=args.top_k,
        modalities=[mc.modality(m) for m in args.modality],
        filter=mc.parse_filter(args.filter),
        score_threshold=args.threshold,
        group_size=args.group_size,
        positives=[
            mc.pb.WeightedInput(input=mc.query_input(text=args.text, id=args.id, **media), weight=1.0)
        ],
        negatives=[mc.pb.WeightedInput(input=mc.query_input(id=i), weight=1.0) for i in args.negative_id],
        stages=_stages(args),
        calibrated_threshold=args.calibrated_threshold,
    )
    if args.server:
        with cli_auth.connect(args) as client:
            resp = client.search_request(request)
        hits = [mc.hit_to_dict(h) for h in resp.hits]
    else:
        hits = _local_search(args, request)
    if args.json:
        print(json.dumps({"results": hits}))
    else:
        for rank, h in enumerate(hits, 1):
            label = h.get("text", "")[:60].replace("\n", " ")
            if "t_start" in h:
                label = f"{h['track']} {h['t_start']:.1f}-{h['t_end']:.1f}s" + (
                    " (whole file)" if h["pooled"] else ""
                )
            print(f"{rank:>3}  {h['score']:.4f}  {h['modality']:<5}  {h['source'] or h['id']}  {label}")
    return 0


def _stages(args: argparse.Namespace) -> mc.pb.SearchStages:
    return mc.pb.SearchStages(
        oversampling=args.oversampling,
        quantized=True if args.quantized else None,
        exact_rescore=False if args.no_rescore else None,
        mmr_lambda=args.mmr,
    )


def _mine(args: argparse.Namespace) -> int:
    queries = [mc.query_input(text=t) for t in args.text]
    for kind in ("image", "audio", "video"):
        queries += [mc.query_input(**{kind: p.read_bytes()}) for p in getattr(args, kind)]
    with cli_auth.connect(args) as client:
        resp = client.mine(
            queries=queries,
            positive_ids=args.positive,
            k=args.k,
            modalities=args.modality,
            filter=mc.parse_filter(args.filter),
            group_key=args.group_key,
            group=args.group,
            max_fraction_of_positive=args.max_fraction,
        )
    hits = [mc.hit_to_dict(h) for h in resp.negatives]
    if args.json:
        out: dict[str, Any] = {"negatives": hits}
        if resp.HasField("positive_score"):
            out["positive_score"] = round(resp.positive_score, 6)
        print(json.dumps(out))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:>3}  {h['score']:.4f}  {h['modality']:<5}  {h['source'] or h['id']}")
    return 0


def _local_search(args: argparse.Namespace, request: mc.pb.SearchRequest) -> list[dict[str, Any]]:
    from server import convert
    from server.context import background

    services = _local_services(args)
    try:
        query = convert.search_query_from_proto(request)
        outcome = services.queries.search(background(), query, convert.search_params_from_proto(request))
        return [mc.hit_to_dict(convert.hit_to_proto(h)) for h in outcome.hits]
    finally:
        services.close()


def _stats(args: argparse.Namespace) -> int:
    if args.server:
        with cli_auth.connect(args) as client:
            s = client.stats()
        out: dict[str, Any] = {
            "points": s.points,
            "bundle_id": s.bundle_id,
            "bundle": s.bundle_name,
            "dim": s.dim,
            "by_modality": dict(s.by_modality),
            "store": s.store,
        }
    else:
        from server.context import background

        services = _local_services(args)
        try:
            info = services.queries.stats(background())
        finally:
            services.close()
        out = {
            "points": info.points,
            "bundle_id": info.schema.bundle_id,
            "bundle": services.embedder.encoder.bundle.spec.name,
            "dim": info.schema.dim,
            "by_modality": info.by_modality,
            "store": info.kind,
        }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


def _health(args: argparse.Namespace) -> int:
    with cli_auth.connect(args, timeout=args.timeout) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def _demo(args: argparse.Namespace) -> int:
    from mmsearch.demo import run_demo

    return run_demo(args.dir, retrain=args.retrain)
