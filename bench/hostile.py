"""Ordinary query latency while a second client sends the worst requests the caps allow.

Starts `mmsearch serve` (tiny bundle, default caps) on a fresh data dir, ingests a few hundred
texts and images, then alternates two phases `--rounds` times:

- baseline: one client sends `--queries` ordinary text searches back to back, each timed;
- attack: the same stream, for at least `--attack-seconds`, while `--attackers` other clients
  send in turn the costliest requests the server's caps admit: one-word texts at the query cap,
  256-condition filters, 1024 unknown ids, 256-item batches (texts up to the message cap,
  metadata at its cap), an item at the text cap with metadata at its cap, 256 query texts at the
  cap, and media at the decode caps (two hours of audio, 4096x4096 video frames over two hours,
  a 64 MP image). Memory-heavy attacks go one at a time, so the bench cannot exhaust the host.

After each attack phase the attackers stop and the server is left to go idle before the next
baseline. Percentiles are per phase (a failed query counts with the time it took); the figures
reported are the medians over rounds. Peak RSS is the server's VmHWM, and the sampled peak of
the server and its decoder workers together. The server's log is left in bench/out/.
Prints one JSON object (last line); goal_met is p99 under attack <= 3 x p99 without.

Each media attack sends one capped file per Embed. The caps admit far more: 48 two-hour FLACs
fit in one 64 MiB message, each decoding to ~460 MB that the server holds until the batch is
embedded. `--media-batch N` sends N copies; beyond a few, expect the host to run out of memory.

    .venv/bin/python bench/hostile.py [--queries 200] [--rounds 3] [--attackers 2]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import grpc
from google.protobuf.message import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import client as mc
from mmsearch.client import MMSearchClient
from mmsearch.launch import launch_server
from mmsearch.v1 import search_pb2 as pb
from tests.media import image_bytes

REPO = Path(__file__).resolve().parents[1]
# Generated hostile media is kept here between runs (ignored by git): the 4K video takes ~10 s.
CACHE = REPO / "bench" / "out" / "hostile-media"
MIB = 1024 * 1024


# -- the server ----------------------------------------------------------------------------------


def _proc_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        pass
    return out


def _cpu_ticks(pid: int) -> int:
    """User + system clock ticks of a process and its live children (the decoder workers)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler:
    """The peak of the server's RSS plus its decoder workers', sampled every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            total = _proc_kib(self.pid, "VmRSS") + sum(_proc_kib(c, "VmRSS") for c in _children(self.pid))
            self.peak_kib = max(self.peak_kib, total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def wait_idle(pid: int, *, limit: float = 90.0, busy_ticks: int = 5) -> float:
    """Wait until the server and its workers use (almost) no CPU for half a second: cancelled
    work has stopped and decoders have finished. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        before = _cpu_ticks(pid)
        time.sleep(0.5)
        if _cpu_ticks(pid) - before <= busy_ticks:
            break
    return time.monotonic() - start


# -- the corpus and the ordinary queries ----------------------------------------------------------

NOUNS = ["kite", "harbour", "bicycle", "lantern", "glacier", "orchard", "violin", "market", "comet", "ferry"]
ADJECTIVES = ["red", "quiet", "ancient", "frozen", "crowded", "golden", "misty", "broken", "tiny", "bright"]
PLACES = ["at dawn", "in the rain", "by the sea", "on a hill", "after the storm", "in winter", "at night"]


def sentence(rng: random.Random) -> str:
    return f"a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(PLACES)}"


def ingest(client: MMSearchClient, texts: int, images: int, rng: random.Random) -> int:
    items = [
        mc.text_item(
            f"{sentence(rng)}, note {i}", metadata={"color": rng.choice(ADJECTIVES), "year": 2000 + i % 25}
        )
        for i in range(texts)
    ]
    items += [mc.image_item(image_bytes(i), metadata={"year": 2000 + i % 25}) for i in range(images)]
    written = 0
    for start in range(0, len(items), 64):
        written += client.upsert(items[start : start + 64]).written
    return written


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)  # failed queries included
    errors: Counter[str] = field(default_factory=Counter)
    details: dict[str, str] = field(default_factory=dict)  # the first message per error status

    def max_ms(self) -> float:
        return max(self.latencies_ms, default=float("nan"))

    def percentile(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def ordinary_stream(client: MMSearchClient, n: int, rng: random.Random, min_seconds: float = 0.0) -> Phase:
    """At least `n` searches, back to back, and for at least `min_seconds`."""
    phase = Phase()
    until = time.monotonic() + min_seconds
    for i in itertools.count():
        if i >= n and time.monotonic() >= until:
            break
        start = time.perf_counter()
        try:
            client.search(text=sentence(rng), top_k=10)
        except grpc.RpcError as exc:
            phase.errors[exc.code().name] += 1
            phase.details.setdefault(exc.code().name, (exc.details() or "")[:300])
        phase.latencies_ms.append((time.perf_counter() - start) * 1e3)
    return phase


# -- the attacks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    name: str
    method: str
    build: Callable[[int], Message]  # from a counter, so that written content is new each time
    exclusive: bool = False  # memory-heavy: one in flight at a time across the attackers


def hostile_media() -> dict[str, bytes]:
    """Media at the decode caps (encoders.limits, encoders.media), generated once and cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    makers: dict[str, Callable[[], bytes]] = {
        "audio-2h.flac": _long_flac,
        "video-4k-2h.mp4": _big_video,
        "image-64mp.png": _big_png,
    }
    out = {}
    for name, make in makers.items():
        path = CACHE / name
        if not path.exists():
            path.write_bytes(make())
        out[name] = path.read_bytes()
    return out


def _long_flac(seconds: int = 7_190, rate: int = 8_000) -> bytes:
    """Just under the 2-hour audio cap; silence compresses to ~1 MB and decodes to ~460 MB."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        minute = np.zeros((1, rate * 60), dtype=np.int16)
        for i in range(seconds // 60):
            frame = av.AudioFrame.from_ndarray(minute, format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = i * rate * 60
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _big_video(side: int = 4_096, frames: int = 120, seconds: int = 7_200) -> bytes:
    """Frames at the pixel cap (4096 x 4096), `frames` of them (the sampler's maximum) spread
    over two hours; every frame a keyframe, so each sampled frame is one full decode."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(frames, seconds))
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "1"}
        plane = np.full((side * 3 // 2, side), 90, dtype=np.uint8)
        for i in range(frames):
            plane[:64, :64] = (i * 2) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def _big_png(width: int = 8_000, height: int = 8_000) -> bytes:
    """64 MP, the image pixel cap: ~200 KB of PNG, 192 MB of RGB once decoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(buf, format="PNG")
    return buf.getvalue()


def attacks(media: dict[str, bytes], *, caps: dict[str, int], media_batch: int) -> list[Attack]:
    query_chars = caps["max_query_text_chars"]
    top_k, conditions, ids = caps["max_top_k"], caps["max_filter_conditions"], caps["max_ids_per_call"]
    batch, meta_bytes = caps["max_batch_items"], caps["max_metadata_bytes"]
    # Largest per-item text that keeps a full batch under the message cap.
    batch_text = min(caps["max_item_text_chars"], (caps["max_message_bytes"] - MIB) // batch)
    big_meta = {"blob": "m" * (meta_bytes - 100)}
    many = pb.Filter(
        should=[
            pb.Condition(key=f"meta.k{i}", any_of=pb.KeywordList(values=[f"v{i}-{j}" for j in range(1000)]))
            for i in range(conditions // 2)
        ],
        must_not=[
            pb.Condition(key="year", range=pb.Range(gte=1000 + i, lt=1001 + i))
            for i in range(conditions // 2)
        ],
    )

    def one_word_search(_: int) -> Message:
        return pb.SearchRequest(query=pb.QueryInput(text="q" * query_chars), top_k=top_k, group_size=100)

    def filter_search(_: int) -> Message:
        return pb.SearchRequest(
            query=pb.QueryInput(text="a red kite"), top_k=top_k, group_size=100, filter=many
        )

    def unknown_ids(n: int) -> Message:
        return pb.GetRequest(ids=[f"unknown-{n}-{i}" for i in range(ids)], with_vectors=True)

    def recommend_unknown(n: int) -> Message:
        return pb.RecommendRequest(positive_ids=[f"unknown-{n}-{i}" for i in range(ids)], top_k=top_k)

    def metadata_batch(n: int) -> Message:
        return pb.UpsertRequest(
            items=[mc.text_item(f"attack {n} item {i}", metadata=big_meta) for i in range(batch)]
        )

    def text_batch(n: int) -> Message:
        words = (f"w{n}x{i} " for i in itertools.count())
        body = "".join(itertools.islice(words, batch_text // 8))[:batch_text]
        return pb.UpsertRequest(items=[mc.text_item(f"{i} {body}"[:batch_text]) for i in range(batch)])

    def capped_item(n: int) -> Message:
        text = ("w " * caps["max_item_text_chars"])[: caps["max_item_text_chars"] - 10] + f" {n}"
        return pb.UpsertRequest(items=[mc.text_item(text, metadata=big_meta)])

    def query_batch(n: int) -> Message:
        text = ("word " * query_chars)[: query_chars - 12]
        return pb.EmbedRequest(inputs=[pb.QueryInput(text=f"{n} {i} {text}") for i in range(batch)])

    def media_input(kind: str, data: bytes) -> Callable[[int], Message]:
        def build(_: int) -> Message:
            q = pb.QueryInput()
            setattr(q, kind, data)
            return pb.EmbedRequest(inputs=[q] * media_batch)

        return build

    # Cheap and costly interleaved, so that two attackers mostly run one of each.
    return [
        Attack("upsert_text_cap_with_metadata_cap", "Upsert", capped_item, exclusive=True),
        Attack("search_one_word_at_text_cap", "Search", one_word_search),
        Attack("embed_audio_2h", "Embed", media_input("audio", media["audio-2h.flac"])),
        Attack("get_unknown_ids_at_cap", "Get", unknown_ids),
        Attack("upsert_batch_texts_to_message_cap", "Upsert", text_batch, exclusive=True),
        Attack("search_filter_at_condition_cap", "Search", filter_search),
        Attack("embed_video_4k_2h", "Embed", media_input("video", media["video-4k-2h.mp4"])),
        Attack("recommend_unknown_ids_at_cap", "Recommend", recommend_unknown),
        Attack("embed_batch_query_texts_at_cap", "Embed", query_batch),
        Attack("upsert_batch_metadata_at_cap", "Upsert", metadata_batch),
        Attack("embed_image_64mp", "Embed", media_input("image", media["image-64mp.png"])),
    ]


@dataclass
class AttackStats:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "statuses": dict(self.statuses),
            "median_ms": round(statistics.median(self.ms), 1) if self.ms else None,
            "max_ms": round(max(self.ms), 1) if self.ms else None,
        }


class Attackers:
    """Threads, each with its own channel, sending the attacks in turn until stopped."""

    def __init__(self, target: str, plan: list[Attack], n: int, timeout: float, seed: int) -> None:
        self.target = target
        self.plan = plan
        self.n = n
        self.timeout = timeout
        self.stats = {a.name: AttackStats() for a in plan}
        self._lock = threading.Lock()
        self._exclusive = threading.Lock()
        self._counter = itertools.count(seed * 1_000_000)
        self._next = itertools.cycle(range(len(plan)))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.n)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        with grpc.insecure_channel(
            self.target,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        ) as channel:
            while not self._stop.is_set():
                with self._lock:
                    attack = self.plan[next(self._next)]
                    n = next(self._counter)
                # One memory-heavy request at a time (GiBs each): the bench must not OOM the host.
                while attack.exclusive and not self._exclusive.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                try:
                    self._send(channel, attack, n)
                finally:
                    if attack.exclusive:
                        self._exclusive.release()

    def _send(self, channel: grpc.Channel, attack: Attack, n: int) -> None:
        payload = attack.build(n).SerializeToString()
        rpc = channel.unary_unary(
            f"/mmsearch.v1.SearchService/{attack.method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        start = time.perf_counter()
        call = rpc.future(payload, timeout=self.timeout)
        while not call.done():
            if self._stop.wait(0.1):
                # The phase is over: cancel (the server stops at its next check) and count the
                # attack as cut short rather than let it run into the next baseline.
                call.cancel()
                break
        try:
            call.result()
            code = "OK"
        except grpc.FutureCancelledError:
            code = "CUT_AT_PHASE_END"
        except grpc.RpcError as exc:
            code = "CUT_AT_PHASE_END" if call.cancelled() else exc.code().name
        with self._lock:
            stats = self.stats[attack.name]
            stats.sent += 1
            stats.statuses[code] += 1
            if code != "CUT_AT_PHASE_END":  # a partial time would understate what it costs
                stats.ms.append((time.perf_counter() - start) * 1e3)


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=300, help="texts ingested before the run")
    ap.add_argument("--images", type=int, default=60, help="images ingested before the run")
    ap.add_argument("--queries", type=int, default=200, help="ordinary queries per phase")
    ap.add_argument("--rounds", type=int, default=3, help="baseline + attack phase pairs")
    ap.add_argument("--attackers", type=int, default=2, help="attacking clients")
    ap.add_argument(
        "--attack-seconds", type=float, default=45.0, help="an attack phase lasts at least this long"
    )
    ap.add_argument("--attack-timeout", type=float, default=60.0, help="each attack's deadline, seconds")
    ap.add_argument(
        "--media-batch",
        type=int,
        default=1,
        help="copies of each capped media file per Embed (see above before raising it)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from server.config import ServerConfig  # the caps the attacks are sized to (the server's defaults)

    cfg = ServerConfig()
    caps = {
        name: int(getattr(cfg, name))
        for name in (
            "max_query_text_chars",
            "max_item_text_chars",
            "max_filter_conditions",
            "max_ids_per_call",
            "max_metadata_bytes",
            "max_batch_items",
            "max_top_k",
            "max_message_bytes",
        )
    }
    rng = random.Random(args.seed)
    started = time.monotonic()
    media = hostile_media()
    plan = attacks(media, caps=caps, media_batch=args.media_batch)
    with tempfile.TemporaryDirectory(prefix="mmsearch-hostile-") as tmp:
        server = launch_server(Path(tmp) / "data", cwd=REPO)
        sampler = RssSampler(server.pid)
        try:
            with MMSearchClient(server.target, timeout=60) as client:
                client.wait_ready(30)
                points = ingest(client, args.texts, args.images, rng)
                ordinary_stream(client, 30, rng)  # warm-up
                wait_idle(server.pid)
                attackers = Attackers(server.target, plan, args.attackers, args.attack_timeout, args.seed)
                rounds = []
                for _ in range(args.rounds):
                    base = ordinary_stream(client, args.queries, rng)
                    attackers.start()
                    time.sleep(1.0)  # let the first attacks get going
                    attacked = ordinary_stream(client, args.queries, rng, args.attack_seconds)
                    attackers.stop()
                    idle_s = wait_idle(server.pid)
                    rounds.append((base, attacked, idle_s))
                healthy = client.health() == "SERVING"
        finally:
            sampler.stop()
            server_peak_kib = _proc_kib(server.pid, "VmHWM")
            server.stop()

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    p50 = med([b.percentile(0.5) for b, _, _ in rounds])
    p99 = med([b.percentile(0.99) for b, _, _ in rounds])
    p50_attack = med([a.percentile(0.5) for _, a, _ in rounds])
    p99_attack = med([a.percentile(0.99) for _, a, _ in rounds])
    ratio = round(p99_attack / p99, 2) if p99 > 0 else float("inf")
    errors = sum((a.errors for _, a, _ in rounds), Counter[str]())
    details = {k: v for _, a, _ in rounds for k, v in a.details.items()}
    log = CACHE.parent / "hostile-server.log"
    log.write_text("".join(server.output))
    alarms = [line.strip()[:300] for line in server.output if " ERROR " in line or "Traceback" in line]
    print(
        json.dumps(
            {
                "p50_ms": p50,
                "p99_ms": p99,
                "p50_under_attack_ms": p50_attack,
                "p99_under_attack_ms": p99_attack,
                "p99_ratio": ratio,
                "peak_rss_mb": round(server_peak_kib / 1024, 1),
                "peak_rss_with_workers_mb": round(sampler.peak_kib / 1024, 1),
                "goal_met": ratio <= 3,
                "max_under_attack_ms": round(max(a.max_ms() for _, a, _ in rounds), 1),
                "ordinary_errors_under_attack": dict(errors),
                "ordinary_error_details": details,
                "server_log_errors": len(alarms),
                "server_log_first_errors": alarms[:5],
                "server_log": str(log.relative_to(REPO)),
                "server_healthy_after": healthy,
                "rounds": [
                    {
                        "p50_ms": round(b.percentile(0.5), 2),
                        "p99_ms": round(b.percentile(0.99), 2),
                        "p50_under_attack_ms": round(a.percentile(0.5), 2),
                        "p99_under_attack_ms": round(a.percentile(0.99), 2),
                        "max_under_attack_ms": round(a.max_ms(), 1),
                        "queries_under_attack": len(a.latencies_ms),
                        "idle_wait_s": round(idle, 1),
                    }
                    for b, a, idle in rounds
                ],
                "attacks": {name: s.summary() for name, s in attackers.stats.items()},
                "config": {
                    "points": points,
                    "queries_per_phase": args.queries,
                    "rounds": args.rounds,
                    "attackers": args.attackers,
                    "attack_timeout_s": args.attack_timeout,
                    "attack_phase_min_s": args.attack_seconds,
                    "media_batch": args.media_batch,
                    "caps": caps,
                    "cpus": os.cpu_count(),
                },
                "elapsed_s": round(time.monotonic() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
