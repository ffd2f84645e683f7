"""Helpers of the ``clip-zoo serve`` tests: a collection of shape images embedded by ``clip-zoo embed``,
and the real server started in a subprocess on a free loopback port."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TEXTS = ["a photo of a red circle", "a photo of a blue square", "a photo of a green star", "a photo of a black cross"]
STARTUP_SECONDS = 120


@dataclass
class Collection:
    """48 shape images (one per class), their texts, and the ``embed`` output of both."""

    folder: Path
    images: list[Path]
    npy: Path
    vectors: dict = field(default_factory=dict)  # image path or text -> embed's vector


def make_collection(root: Path) -> Collection:
    from clip_core import shapes

    from clip_zoo.__main__ import main
    from clip_zoo.embed import read_embeddings

    folder = root / "imgs"
    folder.mkdir(parents=True)
    images = []
    for label_id, name in enumerate(shapes.label_names()):
        path = folder / f"{label_id:02d}_{name.replace(' ', '_')}.png"
        shapes.render_index(7, label_id, label_id).save(path)
        images.append(path)
    (root / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    npy = root / "emb.npy"
    assert main(["embed", str(folder), "--texts", str(root / "texts.txt"), "--out", str(npy), "--framework", "torch",
                 "--no-progress"]) == 0
    emb, index, _ = read_embeddings(str(npy))
    vectors = {r.get("path", r.get("text")): emb[r["row"]] for r in index}
    return Collection(folder, images, npy, vectors)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    probes: int = 0  # requests this helper made itself (readiness polls)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(workdir: Path, *args: str, hooks: tuple[str, ...] = (), env: dict | None = None) -> Server:
    """``clip-zoo serve ARGS`` (torch, bundled model unless ``--model``) in a subprocess, once ready."""
    import httpx

    port = free_port()
    log = workdir / f"serve-{port}.log"
    cmd = [sys.executable, str(TESTS / "hooked.py"), *hooks, "-m", "clip_zoo", "serve", "--port", str(port),
           "--framework", "torch", "--threads", "1", *args]
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=environ, cwd=str(workdir))
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{server.log_text()}")
        try:
            server.probes += 1
            if httpx.get(server.url + "/readyz", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            server.probes -= 1  # never reached the application
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"the server was not ready in {STARTUP_SECONDS} s:\n{server.log_text()}")


def metric(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def error_of(resp) -> dict:
    """The JSON error body of a 4xx/5xx answer (never a stack trace)."""
    assert "Traceback" not in resp.text and 'File "' not in resp.text, resp.text
    body = json.loads(resp.text)
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    return body["error"]


def assert_vectors(got, want, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol, rtol=0)
