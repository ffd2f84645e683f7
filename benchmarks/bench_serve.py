"""Load benchmark of ``clip-zoo serve``: throughput under 64 concurrent clients vs offline ``clip-zoo embed``.

Run: ``python -m benchmarks.bench_serve [--quick] [--images N] [--clients C]``.

- ``offline``: ``clip-zoo embed FOLDER`` on N 640x480 JPEGs; its own items/s figure (model load
  excluded, decoding + preprocessing + encoding + writing included).
- ``serve``: ``clip-zoo serve`` with the same model and framework; C clients (asyncio + httpx, in
  this process) each upload one image per request (multipart) and wait for the answer, 2 N requests
  in all; images/s over the whole run and p50/p99 request latency.
  One warm server (idle while embed runs); rounds alternate embed, load, embed, load ... and the
  ratio is the median over rounds of (serve / the embed run just before it), so both figures of a
  round see the same machine load; target >= 0.8. The server's vectors are checked against
  embed's (max abs <= 1e-4) first.
- ``overload``: a server with a 32-input queue hit by 256 clients at once: the number of 200s and
  503s, that nothing else came back, that the server still answers /healthz, and its peak RSS.

Full mode uses a random-weight ViT-B/32 (224 px); ``--quick`` the bundled 64 px model, so its ratio
mostly measures HTTP overhead. Writes ``benchmarks/results/serve.json`` (``serve_quick.json``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_e2e import make_images
from .common import write_result
from .model_inputs import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.8
TOLERANCE = 1e-4


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")


def _offline(model: str, folder: Path, out: Path) -> float:
    """Items/s reported by ``clip-zoo embed`` (after the model is loaded)."""
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    cmd = [sys.executable, "-m", "clip_zoo", "embed", str(folder), "--out", str(out), "--model", model,
           "--framework", "torch", "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    found = re.search(r"\(([\d.]+) items/s\)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"clip-zoo embed failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return float(found.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, *args: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "clip_zoo", "serve", "--model", model, "--framework", "torch", "--port", str(port),
           *args]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"clip-zoo serve exited:\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("clip-zoo serve was not ready in 120 s")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(120)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _load(url: str, files: list[Path], clients: int, requests: int) -> dict:
    """``clients`` closed-loop clients sending ``requests`` single-image uploads in all."""
    import httpx

    blobs = [(p.name, p.read_bytes()) for p in files]
    latencies, codes, counter = [], {}, iter(range(requests))

    async def client(http) -> None:
        for i in counter:
            name, data = blobs[i % len(blobs)]
            t0 = time.perf_counter()
            resp = await http.post("/v1/embeddings", files={"file": (name, data, "image/jpeg")})
            latencies.append(time.perf_counter() - t0)
            codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {"images_per_second": requests / seconds, "seconds": seconds, "codes": codes,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _check_vectors(url: str, files: list[Path], out: Path) -> float:
    """Max abs difference of the server's vectors and embed's for the first files."""
    import httpx

    from clip_zoo.embed import read_embeddings

    emb, index, _ = read_embeddings(str(out))
    rows = {r["path"]: r["row"] for r in index}
    upload = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in files]
    data = httpx.post(url + "/v1/embeddings", files=upload, timeout=300).json()["data"]
    got = np.asarray([d["embedding"] for d in data], np.float32)
    return float(np.abs(got - emb[[rows[str(p)] for p in files]]).max())


async def _overload(url: str, blob: bytes, clients: int) -> dict:
    import httpx

    async def one(http):
        try:
            return (await http.post("/v1/embeddings", files={"file": ("x.jpg", blob, "image/jpeg")})).status_code
        except httpx.TransportError as err:
            return type(err).__name__

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        results = await asyncio.gather(*(one(http) for _ in range(clients)))
    return {str(k): results.count(k) for k in set(results)}


def _overload_round(model: str, image: Path) -> dict:
    """256 simultaneous uploads against a 32-input queue: 200s and 503s only, alive after, peak RSS."""
    import httpx

    proc, url = _start(model, "--max-queue", "32", "--max-batch", "16", "--max-connections", "512")
    result: dict = {}
    try:
        result["peak_rss_mb_before"] = _peak_rss_mb(proc.pid)
        result["status_counts"] = asyncio.run(_overload(url, image.read_bytes(), 256))
        result["alive_after"] = httpx.get(url + "/healthz", timeout=30).status_code == 200
        result["peak_rss_mb_after"] = _peak_rss_mb(proc.pid)
    finally:
        result["exit_status"] = _stop(proc)
    return result


def run(quick: bool, n_images: int, clients: int, repeats: int, workdir: Path) -> dict:
    """One warm server (idle while embed runs) and ``repeats`` paired rounds: embed, then the load."""
    folder = workdir / "images"
    files = make_images(folder, n_images)
    model = "default" if quick else str(checkpoint("ViT-B/32", workdir)[2])
    out = workdir / "embed" / "emb.npy"
    offline, served = [], []
    proc, url = _start(model, "--max-connections", str(2 * clients), "--max-queue", str(4 * clients))
    try:
        for _ in range(repeats):
            offline.append(_offline(model, folder, out))
            if not served:
                diff = _check_vectors(url, files[:8], out)
                if diff > TOLERANCE:
                    raise RuntimeError(f"the server's vectors differ from embed's by {diff} > {TOLERANCE}")
                asyncio.run(_load(url, files[:clients], clients, clients))  # warm-up round
            served.append(asyncio.run(_load(url, files, clients, 2 * n_images)))
        server_rss = _peak_rss_mb(proc.pid)
    finally:
        _stop(proc)
    overload = _overload_round(model, files[0])
    paired = [s["images_per_second"] / o for s, o in zip(served, offline)]
    return {"model": "default (64 px)" if quick else "ViT-B/32 (random weights, 224 px)", "framework": "torch",
            "images": n_images, "image_size": [640, 480], "clients": clients, "requests_per_round": 2 * n_images,
            "repeats": repeats, "offline_images_per_second": offline, "serve": served,
            "serve_peak_rss_mb": server_rss, "max_abs_diff_vs_embed": diff, "overload": overload,
            # each round's serve figure over the embed run just before it (same machine load), median of rounds
            "ratios": {"serve_vs_offline_embed": statistics.median(paired)},
            "targets": {"serve_vs_offline_embed": TARGET}, "round_ratios": paired,
            "ratio_of_medians": statistics.median(s["images_per_second"] for s in served) / statistics.median(offline),
            "p50_ms": statistics.median(s["p50_ms"] for s in served),
            "p99_ms": statistics.median(s["p99_ms"] for s in served)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the bundled tiny model, 64 images, one round")
    p.add_argument("--images", type=int, help="number of JPEGs (default 256; 64 with --quick)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 4; 1 with --quick)")
    p.add_argument("--dir", help="work directory (default: a temp dir)")
    args = p.parse_args(argv)
    n = args.images or (64 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 4)
    workdir = Path(tempfile.mkdtemp(prefix="bench_serve.", dir=args.dir))
    try:
        result = run(args.quick, n, args.clients, repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"offline embed: {result['offline_images_per_second']} img/s; serve: "
          f"{[round(s['images_per_second'], 1) for s in result['serve']]} img/s, p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms; round ratios {[round(r, 2) for r in result['round_ratios']]}; "
          f"overload: {result['overload']}")
    path = write_result("serve_quick" if args.quick else "serve", result)
    print(f"wrote {path}")
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
