"""Object storage against a local S3 server, side by side in one run: extraction from and into
``s3://`` vs local, the requests and bytes of a training window read, the store's open time.

    .venv/bin/python -m bench.object_store [--quick] [--seconds S] [--repeats N] [--only P,..]

Without ``AWS_ENDPOINT_URL`` a moto S3 server is started on 127.0.0.1 in its own process (as a
remote store would be: its CPU is not this process's) and stopped at the end; its CPU time is
counted as the measured work's own, not as interference from other processes. Parts (``--only``):

- ``extract``: each round runs ``run_shard`` end to end (decode, encode with the bench encoder,
  write a store) three ways, in an order that alternates between rounds: local files into a
  local store, ``s3://`` sources (listing included, downloads prefetched to scratch) into a
  local store, and local files into an ``s3://`` store (a new prefix per run: creation probe,
  lease, segments, records). Best of the rounds, as in ``bench.extract``. Targets:
  ``s3_vs_local`` (s3 sources / local) and ``store_s3_vs_local`` (s3 store / local) >= 0.85.
- ``window``: a store of SigLIP-L-sized tokens (10 x 1024 float16 per frame, as
  ``bench.data``) on ``s3://``; each trial opens it with ``cache.open_store`` and reads one
  1,200-frame window at a random place, through a counting HTTP proxy between obstore and the
  server (every request and every answer's body bytes; the open is counted apart). Targets:
  ``window_bytes_ratio`` (bytes fetched / the window's tokens + pts as stored) <= 1.2 and
  ``window_requests`` (the most requests one window read made) <= 8.
- ``open``: one store of 10,000 tiny videos (1-2 frames each, 4 shards) written through
  ``cache.ShardWriter`` once on local disk and once on ``s3://``; fresh ``cache.open_store`` of
  each, alternating, best of N. Twice: with 5 commits per shard (24 records on s3), and with
  250 (1,004 records: about what a real extraction of 10,000 videos of a few minutes commits,
  a 4,096-frame segment per ten videos). Target: ``open_s3_vs_local`` <= 2.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import gc
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from bench.extract import (
    DEFAULT_ENCODER,
    MODELS,
    ROOT,
    Helpers,
    Run,
    best,
    make_videos,
    measure,
    timed,
)

TARGETS = {
    "s3_vs_local": (">=", 0.85),
    "store_s3_vs_local": (">=", 0.85),
    "window_bytes_ratio": ("<=", 1.2),
    "window_requests": ("<=", 8),  # "a handful": a list, a few metadata gets, a few ranges
    "open_s3_vs_local": ("<=", 2.0),
}
PARTS = ("extract", "window", "open")
BUCKET = "bench-sources"
STORE_BUCKET = "bench-stores"
TEST_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
WINDOW_TOKENS, WINDOW_DIM = 10, 1024  # SigLIP-L-sized, as bench.data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".bench")
    ap.add_argument("--seconds", type=float, default=None, help="long video length (60)")
    quick = "20 s video, 2 rounds, 2,000 videos to open, settle 3 s, 1 try"
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, of {PARTS}")
    ap.add_argument("--encoder", default=DEFAULT_ENCODER, help="open_clip model, random weights")
    ap.add_argument("--threads", type=int, default=1, help="decode threads = torch threads")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefetch", type=int, default=None, help="job.remote.prefetch (2)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3, quick 2)")
    ap.add_argument("--settle", type=float, default=None,
                    help="max s to wait for a quiet CPU (20, quick 3)")  # fmt: skip
    ap.add_argument("--tries", type=int, default=None,
                    help="attempts per disturbed measurement (3, quick 1)")  # fmt: skip
    ap.add_argument("--window", type=int, default=1200, help="frames per window read")
    ap.add_argument("--window-videos", type=int, default=None, help="videos (2, quick 1)")
    ap.add_argument("--window-frames", type=int, default=None,
                    help="frames per video of the window store (2,400, quick 1,600)")  # fmt: skip
    ap.add_argument("--trials", type=int, default=None, help="window reads (6, quick 3)")
    ap.add_argument("--open-videos", type=int, default=None, help="10,000 (quick 2,000)")
    ap.add_argument("--open-shards", type=int, default=4)
    ap.add_argument("--open-commits", default=None,
                    help="commits per shard, one store per value (5,250; quick 5)")  # fmt: skip
    ap.add_argument("--open-repeats", type=int, default=None, help="opens of each (7, quick 3)")
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": 20.0 if quick else 60.0,
        "repeats": 2 if quick else 3,
        "settle": 3.0 if quick else 20.0,
        "tries": 1 if quick else 3,
        "prefetch": 2,
        "window_videos": 1 if quick else 2,
        "window_frames": 1600 if quick else 2400,
        "trials": 3 if quick else 6,
        "open_videos": 2000 if quick else 10_000,
        "open_repeats": 3 if quick else 7,
        "open_commits": "5" if quick else "5,250",
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.parts = [p for p in args.only.split(",") if p]
    args.open_commits = [int(c) for c in str(args.open_commits).split(",") if c]
    if unknown := set(args.parts) - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    return args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Endpoint:
    """The S3 endpoint of this run, and the CPU seconds its server process has used so far
    (0 for a server this run did not start)."""

    url: str
    pid: int | None = None

    def cpu(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        # utime, stime (and those of waited-for children) in clock ticks: fields 14-17
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def s3_endpoint() -> Iterator[Endpoint]:
    """``AWS_ENDPOINT_URL`` if set; else a moto S3 server of our own on 127.0.0.1 (own process)."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield Endpoint(os.environ["AWS_ENDPOINT_URL"])
        return
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in [*TEST_KEYS, "AWS_ENDPOINT_URL"]}
    os.environ.update({**TEST_KEYS, "AWS_ENDPOINT_URL": endpoint})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server on {endpoint} did not start") from None
                time.sleep(0.2)
        yield Endpoint(endpoint, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def ensure_bucket(name: str) -> None:
    import boto3

    client = boto3.client("s3")
    if name not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=name)


def upload(paths: list[Path], prefix: str) -> str:
    """The bench videos to ``s3://BUCKET/prefix/``; its URL."""
    import boto3

    ensure_bucket(BUCKET)
    client = boto3.client("s3")
    for p in paths:
        client.upload_file(str(p), BUCKET, f"{prefix}/{p.name}")
    return f"s3://{BUCKET}/{prefix}/"


def _met(key: str, value: float) -> bool:
    op, target = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def say_target(key: str, value: float, note: str = "", fmt: str = ".3f") -> bool:
    """Print ``key = value (target op t): met|MISSED`` as bench.extract does; whether met."""
    op, target = TARGETS[key]
    met = _met(key, value)
    print(f"  {key} = {value:{fmt}} (target {op} {target}): {'met' if met else 'MISSED'}{note}")
    return met


# -- extraction: sources and the store, each against local files into a local store ----------


def extraction(args: argparse.Namespace, endpoint: Endpoint) -> dict[str, Any]:
    """Frames/s of run_shard three ways (same videos, same encoder): local files into a local
    store, s3:// sources into a local store, local files into an s3:// store."""
    import torch

    from extract.encoders import ClipConfig
    from extract.pipeline import DecodeOptions, VideoTask
    from extract.remote import RemoteOptions
    from jobs.extract import ExtractSpec, run_shard
    from jobs.inputs import resolve_inputs

    th = args.threads
    torch.set_num_threads(th)
    paths = make_videos(args.cache, args.seconds)
    cfg = ClipConfig(model=args.encoder, pretrained=None, model_config=str(MODELS),
                     autocast="off", device="cpu")  # fmt: skip
    remote = RemoteOptions(prefetch=args.prefetch, scratch_dir=str(args.cache / "scratch"))
    base = ExtractSpec(store="", encoder=cfg, decode=DecodeOptions(threads=th),
                       batch_frames=args.batch, encode_threads=th, progress=False,
                       remote=remote)  # fmt: skip
    local_tasks = tuple(VideoTask(p.stem, p) for p in paths)
    total_bytes = sum(p.stat().st_size for p in paths)
    print(f"extract: {len(paths)} videos, {total_bytes / 1e6:.1f} MB; encoder open_clip "
          f"{args.encoder} random weights; prefetch {args.prefetch}")  # fmt: skip
    url = upload(paths, "videos")
    ensure_bucket(STORE_BUCKET)
    print(f"  s3: {endpoint.url}, sources {url}, stores under s3://{STORE_BUCKET}/")
    store = args.cache / "store-sources"

    def fresh() -> None:
        shutil.rmtree(store, ignore_errors=True)

    def check(res: Any, what: str) -> int:
        if res.failed or res.done != len(paths):
            raise RuntimeError(f"{what} run failed: {res}")
        return int(res.frames)

    def local() -> int:
        return check(run_shard(replace(base, store=str(store), videos=local_tasks), 0, 1), "local")

    def s3_sources() -> int:
        tasks = resolve_inputs(url, remote=remote).tasks  # listing is part of the cost
        return check(run_shard(replace(base, store=str(store), videos=tuple(tasks)), 0, 1), "s3")

    def s3_store() -> int:
        target = f"s3://{STORE_BUCKET}/extract-{uuid.uuid4().hex[:8]}.zarr"  # a new store
        return check(run_shard(replace(base, store=target, videos=local_tasks), 0, 1), "store")

    fresh()
    local()  # warm-up (untimed): loads the encoder, imports, primes oneDNN
    s3_store()  # and the object-store path (obstore, the store's creation probe)
    t0 = time.perf_counter()
    listed = resolve_inputs(url, remote=remote).tasks
    list_s = time.perf_counter() - t0
    order: list[tuple[str, Callable[[], int]]] = [
        ("local", local), ("s3_sources", s3_sources), ("s3_store", s3_store)
    ]  # fmt: skip
    runs: dict[str, list[Run]] = {label: [] for label, _ in order}
    frames = 0
    server: dict[str, list[float]] = {label: [] for label, _ in order}  # its cores per run

    def serving(label: str, fn: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            c0, t0 = endpoint.cpu(), time.perf_counter()
            out = fn()
            server[label].append((endpoint.cpu() - c0) / (time.perf_counter() - t0))
            return out

        return run

    for k in range(args.repeats):
        for label, fn in order if k % 2 == 0 else order[::-1]:
            frames, r = measure(serving(label, fn), args.settle, args.tries, prep=fresh,
                                helpers=endpoint.cpu)  # fmt: skip
            runs[label].append(r)
            of_it = f", S3 server {server[label][-1]:.2f} of them" if endpoint.pid else ""
            print(f"  round {k + 1} {label}: {frames / r.seconds:.2f} frames/s [{r}{of_it}]")
    fresh()
    shutil.rmtree(args.cache / "scratch", ignore_errors=True)
    fps = {label: frames / best(rs).seconds for label, rs in runs.items()}
    disturbed = {label: best(rs).disturbed for label, rs in runs.items()}
    note = " (a best run was disturbed by other processes)"
    src_ratio, store_ratio = fps["s3_sources"] / fps["local"], fps["s3_store"] / fps["local"]
    src_met = say_target("s3_vs_local", src_ratio,
                         note if disturbed["local"] or disturbed["s3_sources"] else "")  # fmt: skip
    store_met = say_target("store_s3_vs_local", store_ratio,
                           note if disturbed["local"] or disturbed["s3_store"] else "")  # fmt: skip
    common = {"frames": frames, "local_fps": round(fps["local"], 3)}
    return {
        "sources": {
            **common,
            "videos": len(listed),
            "bytes": total_bytes,
            "list_seconds": round(list_s, 3),
            "s3_fps": round(fps["s3_sources"], 3),
            "s3_vs_local": round(src_ratio, 4),
            "disturbed": disturbed["local"] or disturbed["s3_sources"],
            "load_average_end": round(os.getloadavg()[0], 2),
            "targets_met": {"s3_vs_local": src_met},
        },
        "store": {
            **common,
            "s3_fps": round(fps["s3_store"], 3),
            "store_s3_vs_local": round(store_ratio, 4),
            "disturbed": disturbed["local"] or disturbed["s3_store"],
            "targets_met": {"store_s3_vs_local": store_met},
        },
    }


# -- counting what a reader asks of the server ---------------------------------------------


@dataclass
class Counts:
    """Requests to the server and the bytes of their answers' bodies."""

    requests: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        return f"{self.requests} requests ({kinds}), {self.bytes:,} bytes"


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}


def request_kind(method: str, target: str, headers: Any) -> str:
    """``LIST`` (a bucket listing), ``GET range``, ``GET``, ``HEAD``, ``PUT``, ..."""
    path, _, query = target.partition("?")
    params = urllib.parse.parse_qs(query)
    if method == "GET" and ("list-type" in params or path.strip("/").count("/") == 0):
        return "LIST"
    if method == "GET" and headers.get("Range"):
        return "GET range"
    return method


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the server, as they are (the ``Host``
    header and so the signature included), and counts them with their answers' body bytes."""

    protocol_version = "HTTP/1.1"  # keep-alive, as obstore uses it
    server: _ProxyServer
    upstream: http.client.HTTPConnection | None = None

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.send_error(501, "chunked request bodies are not forwarded")
            return
        body = self.rfile.read(length) if length else None
        if self.upstream is None:  # one server connection per client connection
            self.upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        conn = self.upstream
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self.upstream = None
            raise
        # Counted before the client has its answer, so a take() after the call sees it.
        kind = request_kind(self.command, self.path, self.headers)
        self.server.counter.add(kind if resp.status < 300 else f"{kind} {resp.status}", len(data))
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and (k.lower() != "content-length" or not data):
                self.send_header(k, v)
        if data or self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    upstream: tuple[str, int]
    counter: RequestCounter


class RequestCounter:
    """A counting HTTP proxy on 127.0.0.1 between obstore and the S3 server: while it is
    entered, ``AWS_ENDPOINT_URL`` names it, so every store opened meanwhile talks through it.
    ``take()`` returns what was counted since the last ``take()`` and starts again."""

    def __init__(self, upstream: str) -> None:
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"the counting proxy forwards to an http:// endpoint, not {upstream}")
        self.upstream = (u.hostname, u.port or 80)
        self._lock = threading.Lock()
        self._counts = Counts()

    def add(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self._counts.requests += 1
            self._counts.bytes += nbytes
            self._counts.kinds[kind] += 1

    def take(self) -> Counts:
        with self._lock:
            out, self._counts = self._counts, Counts()
        return out

    def __enter__(self) -> RequestCounter:
        self._server = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.upstream, self._server.counter = self.upstream, self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._saved = {"AWS_ENDPOINT_URL": os.environ.get("AWS_ENDPOINT_URL")}
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        _restore(self._saved)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


# -- a 1,200-frame window read from an s3:// store -------------------------------------------


def write_synthetic(
    root: str | Path, videos: int, frames: int, n: int, d: int, **layout: int
) -> list[str]:
    """A store of ``videos`` videos of ``frames`` random float16 frames (n x d tokens each),
    written by one ShardWriter, 512 frames at a time (the default layout: 8-frame chunks,
    1,024-frame files, a segment committed once 4,096 frames are buffered, so videos share
    and span segments; ``layout`` overrides it); the video ids."""
    from cache import ShardWriter, StoreLayout, init_store

    lay = StoreLayout(n, d, **layout)  # type: ignore[arg-type]
    init_store(root, layout=lay, features={"encoder": "synthetic"}, provenance={})
    rng = np.random.default_rng(0)
    ids = [f"video{v:02d}" for v in range(videos)]
    with ShardWriter(root, 0) as w:
        for vid in ids:
            w.start(vid)
            for lo in range(0, frames, 512):
                hi = min(lo + 512, frames)
                tok = rng.standard_normal((hi - lo, n, d), dtype=np.float32).astype(np.float16)
                w.write(vid, tok, np.arange(lo, hi) / 2.0)
            w.finish(vid, {"num_frames": frames, "fps": 2.0})
    return ids


def window_bytes(layout: dict[str, Any], frames: int) -> int:
    """The bytes of ``frames`` frames as stored: tokens (float16 or bfloat16 bits) and pts
    (float64)."""
    return frames * (int(layout["tokens_per_frame"]) * int(layout["dim"]) * 2 + 8)


def window_reads(
    url: str, counter: RequestCounter, window: int, trials: int, seed: int = 1200
) -> dict[str, Any]:
    """``trials`` times: a fresh ``open_store(url)``, then one read of ``window`` frames (then
    the same read again: its segments already open); requests and bytes counted apart for the
    open, the read and the repeat. The first window is centred on a place where a video goes
    from one segment to the next, when there is one (the worst case: two segments to open);
    the others are at random places of random videos."""
    from cache import open_store

    rng = np.random.default_rng(seed)
    per: list[dict[str, Any]] = []
    for trial in range(trials):
        counter.take()
        s = open_store(url)
        opened = counter.take()
        vids = s.video_ids()
        vid = vids[int(rng.integers(len(vids)))]
        n = int(s.info(vid)["num_frames"])
        lo = int(rng.integers(0, n - window + 1))
        if trial == 0 and (across := segment_boundary(s, window)) is not None:
            vid, lo = across
        tok, pts = s.read(vid, lo, lo + window)
        cold = counter.take()
        s.read(vid, lo, lo + window)
        warm = counter.take()
        if len(tok) != window or len(pts) != window:
            raise RuntimeError(f"{vid}[{lo}:{lo + window}] read {len(tok)} frames")
        segments = {p["array"] for p in s.info(vid)["pieces"]
                    if p["frames"][0] < lo + window and lo < p["frames"][1]}  # fmt: skip
        per.append({"video": vid, "start": lo, "segments": len(segments),
                    "want": window_bytes(s.layout, window), "open": opened, "cold": cold,
                    "warm": warm})  # fmt: skip
    want = sum(p["want"] for p in per)
    worst = max(per, key=lambda p: p["cold"].requests)
    return {
        "window": window,
        "trials": trials,
        "window_bytes": per[0]["want"],
        "bytes_ratio": sum(p["cold"].bytes for p in per) / want,
        "bytes_ratio_warm": sum(p["warm"].bytes for p in per) / want,
        "requests_max": worst["cold"].requests,
        "requests_mean": sum(p["cold"].requests for p in per) / trials,
        "requests_warm_max": max(p["warm"].requests for p in per),
        "worst": worst,
        "open_requests_max": max(p["open"].requests for p in per),
        "open_bytes_max": max(p["open"].bytes for p in per),
        "per_trial": per,
    }


def segment_boundary(store: Any, window: int) -> tuple[str, int] | None:
    """A window of ``window`` frames centred where a video's frames go on in another segment:
    (video id, first frame), or ``None`` when no video spans segments with room for it."""
    for vid in store.video_ids(status="done"):
        info = store.info(vid)
        n = int(info["num_frames"])
        for piece in info["pieces"][1:]:
            lo = min(max(0, piece["frames"][0] - window // 2), n - window)
            if lo >= 0:
                return vid, lo
    return None


def window(args: argparse.Namespace, endpoint: Endpoint) -> dict[str, Any]:
    """Requests and bytes of 1,200-frame window reads from an s3:// store (the training path)."""
    n, d = WINDOW_TOKENS, WINDOW_DIM
    ensure_bucket(STORE_BUCKET)
    url = f"s3://{STORE_BUCKET}/window-{uuid.uuid4().hex[:8]}.zarr"
    t0 = time.perf_counter()
    write_synthetic(url, args.window_videos, args.window_frames, n, d)
    print(f"window: {url}: {args.window_videos} video(s) x {args.window_frames} frames of "
          f"{n} x {d} float16 written in {time.perf_counter() - t0:.1f} s; "
          f"{args.trials} reads of {args.window} frames")  # fmt: skip
    with RequestCounter(endpoint.url) as counter:
        got = window_reads(url, counter, args.window, args.trials)
    for k, p in enumerate(got["per_trial"], 1):
        print(f"  read {k}: {p['video']}[{p['start']}:{p['start'] + args.window}] "
              f"({p['segments']} segment(s)): {p['cold'].summary()}; again: "
              f"{p['warm'].requests} requests; open: {p['open'].summary()}")  # fmt: skip
    print(f"  window bytes (tokens + pts as stored): {got['window_bytes']:,}; requests per "
          f"read: mean {got['requests_mean']:.1f}, max {got['requests_max']} (segments "
          f"already open: max {got['requests_warm_max']})")  # fmt: skip
    bytes_met = say_target("window_bytes_ratio", got["bytes_ratio"])
    req_met = say_target("window_requests", got["requests_max"], fmt="d")
    return {
        "window": args.window,
        "videos": args.window_videos,
        "frames_per_video": args.window_frames,
        "trials": args.trials,
        "window_bytes": got["window_bytes"],
        "window_bytes_ratio": round(got["bytes_ratio"], 4),
        "window_bytes_ratio_open_segments": round(got["bytes_ratio_warm"], 4),
        "window_requests": got["requests_max"],
        "window_requests_mean": round(got["requests_mean"], 1),
        "window_requests_open_segments": got["requests_warm_max"],
        "worst_read_kinds": dict(got["worst"]["cold"].kinds),
        "open_requests": got["open_requests_max"],
        "open_bytes": got["open_bytes_max"],
        "targets_met": {"window_bytes_ratio": bytes_met, "window_requests": req_met},
    }


# -- the open time of a store of many videos --------------------------------------------------


def write_many(root: str | Path, videos: int, shards: int, commits: int) -> None:
    """A store of ``videos`` tiny videos (1 or 2 frames of 1 x 8 tokens each) over ``shards``
    shards, each shard committed ``commits`` times, through ``cache.ShardWriter``. Each video
    carries the metadata and source fingerprint a real extraction journals, so the records
    have a real one's size."""
    from cache import ShardWriter, StoreLayout, init_store

    init_store(root, layout=StoreLayout(1, 8), features={"encoder": "synthetic-open"},
               provenance={})  # fmt: skip
    for shard in range(shards):
        ids = [f"clips/{v:06d}" for v in range(shard, videos, shards)]
        every = max(1, -(-len(ids) // commits))
        with ShardWriter(root, shard, commit_interval_s=1e9) as w:
            for k, vid in enumerate(ids):
                frames = 1 + k % 2
                size = 1_000_000 + 7919 * k
                w.start(vid, source={"size": size, "etag": f'"{uuid.uuid4().hex}"',
                                     "url": f"s3://videos/{vid}.mp4"})  # fmt: skip
                w.write(vid, np.full((frames, 1, 8), k % 7, np.float16), np.arange(frames) / 2.0)
                w.finish(vid, {"source_path": f"s3://videos/{vid}.mp4", "fps": 2.0,
                               "width": 1280, "height": 720, "rotation": None, "codec": "h264",
                               "source_fps": 30.0, "begin_seconds": 0.0,
                               "end_seconds": frames / 2.0, "duration_seconds": frames / 2.0,
                               "num_frames": frames, "decode_seconds": 0.01,
                               "encode_seconds": 0.01, "decode_workers": 1})  # fmt: skip
                if (k + 1) % every == 0:
                    w.commit()


def open_times(
    roots: dict[str, str | Path], repeats: int, videos: int, helpers: Helpers | None = None
) -> dict[str, list[tuple[Run, float]]]:
    """Each ``cache.open_store`` of each root (fresh objects: a new store client, the index
    read and resolved), alternating which goes first, ``repeats`` times each: its timing (the
    S3 server's CPU counted as the open's own) and the server's CPU seconds during it.
    ``helpers``: the server's CPU seconds so far."""
    from cache import open_store

    server = helpers or _no_server
    times: dict[str, list[tuple[Run, float]]] = {k: [] for k in roots}
    for root in roots.values():  # warm-up (untimed): imports, the first connection
        open_store(root)
    items = list(roots.items())
    for k in range(repeats):
        for label, root in items if k % 2 == 0 else items[::-1]:
            # Each open from the same clean heap: the store opened before is gone and collected
            # (alive, its million objects would be traversed by the garbage collections this
            # open's allocations trigger, charging one backend for the other's index).
            gc.collect()
            c0 = server()
            s, r = timed(functools.partial(open_store, root), server)
            times[label].append((r, server() - c0))
            found = len(s.video_ids())
            del s
            if found != videos:
                raise RuntimeError(f"{root}: {found} videos, not {videos}")
    return times


def _no_server() -> float:
    return 0.0


def store_open(args: argparse.Namespace, endpoint: Endpoint, commits: int) -> dict[str, Any]:
    """Open time of one store of many videos on s3:// vs the same store on local disk."""
    from bench.extract import settle
    from cache import open_storage

    ensure_bucket(STORE_BUCKET)
    local = args.cache / "store-open"
    shutil.rmtree(local, ignore_errors=True)
    url = f"s3://{STORE_BUCKET}/open-{uuid.uuid4().hex[:8]}.zarr"
    built = {}
    for label, root in (("local", local), ("s3", url)):
        t0 = time.perf_counter()
        write_many(root, args.open_videos, args.open_shards, commits)
        built[label] = time.perf_counter() - t0
    records = len(open_storage(url).list("index/"))  # commits + each shard's run record
    journal = sum(p.stat().st_size for p in (local / "index").glob("*.jsonl"))
    print(f"open: {args.open_videos:,} videos, {args.open_shards} shards x {commits} commits "
          f"({records} records on s3, {journal / 1e6:.1f} MB of journal); written in "
          f"{built['local']:.1f} s (local), {built['s3']:.1f} s (s3)")  # fmt: skip
    settle(args.settle, endpoint.cpu)
    times = open_times({"local": local, "s3": url}, args.open_repeats, args.open_videos,
                       endpoint.cpu)  # fmt: skip
    shutil.rmtree(local, ignore_errors=True)
    best_of = {k: min(v, key=lambda rc: (rc[0].disturbed, rc[0].seconds)) for k, v in times.items()}
    for k, v in times.items():
        r, cpu = best_of[k]
        server = f", S3 server CPU {cpu:.3f} s" if k == "s3" and endpoint.pid else ""
        print(f"  {k}: open_store best {r.seconds:.3f} s [{r}{server}] (all: "
              f"{', '.join(f'{t.seconds:.3f}' for t, _ in v)})")  # fmt: skip
    ratio = best_of["s3"][0].seconds / best_of["local"][0].seconds
    disturbed = best_of["s3"][0].disturbed or best_of["local"][0].disturbed
    note = " (a best open was disturbed by other processes)" if disturbed else ""
    met = say_target("open_s3_vs_local", ratio, note)
    return {
        "videos": args.open_videos,
        "shards": args.open_shards,
        "commits_per_shard": commits,
        "records": records,
        "journal_bytes": journal,
        "local_seconds": round(best_of["local"][0].seconds, 4),
        "s3_seconds": round(best_of["s3"][0].seconds, 4),
        "s3_server_cpu_seconds": round(best_of["s3"][1], 4) if endpoint.pid else None,
        "open_s3_vs_local": round(ratio, 3),
        "disturbed": disturbed,
        "targets_met": {"open_s3_vs_local": met},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    out: dict[str, Any] = {}
    with s3_endpoint() as endpoint:
        if "extract" in args.parts:
            out.update(extraction(args, endpoint))
        if "window" in args.parts:
            out["window"] = window(args, endpoint)
        if "open" in args.parts:
            out["open"] = [store_open(args, endpoint, c) for c in args.open_commits]
    out["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
