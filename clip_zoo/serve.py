"""``clip-zoo serve``: an HTTP service for embeddings, zero-shot classification and search (FastAPI + uvicorn).

Endpoints: ``POST /v1/embeddings`` (OpenAI embeddings format; images as data URLs or multipart
uploads), ``POST /classify``, ``POST /search``, ``GET /thumbnails/{id}``, ``GET /v1/models``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus), ``GET /`` (the search page).

The model lives on one worker thread fed by the micro-batcher (:mod:`clip_zoo.serve_batcher`); the
endpoints await its futures. Limits and errors: :mod:`clip_zoo.serve_inputs`; metrics:
:mod:`clip_zoo.serve_metrics`; the HTTP plumbing (body limit, API key, metrics, no stack trace to a
client) and the endpoints: :mod:`clip_zoo.serve_app`. On SIGTERM uvicorn stops accepting, every
accepted request is answered, the batcher drains, and the process exits.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import CLIZooError
from .serve_inputs import ApiError, Limits

__all__ = ["add_parser", "run", "Service", "SearchIndex"]


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve embeddings, classification and search over HTTP",
                       description="An HTTP service (FastAPI + uvicorn, pip install 'clip-zoo[serve]'): "
                                   "OpenAI-style /v1/embeddings, /classify, /search over an `embed` output, "
                                   "/metrics, /healthz, /readyz and a search page at /.")
    p.add_argument("--index", metavar="EMBEDDINGS", help="the .npy of a `clip-zoo embed` run to search (optional)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="most inputs in one model forward (default 64)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest an input waits for others to share its forward (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="most inputs waiting for the model; more are refused with 503 (default 256)")
    p.add_argument("--max-connections", type=int, default=128,
                   help="most concurrent connections; more get 503 (default 128)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body in MB (default 8)")
    p.add_argument("--max-inputs", type=int, default=256, help="most inputs per request (default 256)")
    p.add_argument("--max-text-chars", type=int, default=2000, help="longest text in characters (default 2000)")
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require the API key held by environment variable VAR (Authorization: Bearer KEY)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; CORS is off by default)")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("max_batch", "max_queue", "max_connections", "max_inputs", "max_text_chars"):
        if getattr(args, name) < 1:
            raise CLIZooError(f"--{name.replace('_', '-')} must be at least 1, pass a positive number")
    if args.max_wait_ms < 0 or args.max_body_mb <= 0:
        raise CLIZooError("--max-wait-ms must be >= 0 and --max-body-mb > 0, pass non-negative numbers")
    if not 0 <= args.port <= 65535:
        raise CLIZooError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_queue < args.max_batch:
        raise CLIZooError("--max-queue must be at least --max-batch, raise --max-queue")


def read_api_key(var: Optional[str]) -> Optional[bytes]:
    """The API key held by environment variable ``var`` (``None`` when no key is required)."""
    if not var:
        return None
    key = os.environ.get(var, "")
    if not key.strip():
        raise CLIZooError(f"--api-key-env {var}: the environment variable {var} is not set or empty, "
                          f"export {var}=<a secret key> first")
    return key.strip().encode("utf-8")


class SearchIndex:
    """Brute-force cosine search over the image rows of an ``embed`` output (all rows when it has no images)."""

    def __init__(self, path: str) -> None:
        from .embed import read_embeddings

        emb, index, self.meta = read_embeddings(path)
        rows = [r["row"] for r in index if r["kind"] == "image"] or [r["row"] for r in index]
        if not rows:
            raise CLIZooError(f"{path} holds no embeddings, embed some images first")
        self.path = str(path)
        self.emb = np.ascontiguousarray(emb[rows], np.float32)  # (R, D)
        self.items = [index[r] for r in rows]
        self.by_row = {r["row"]: r for r in self.items if r["kind"] == "image"}

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def search(self, query: np.ndarray, offset: int, k: int) -> list[dict]:
        """Hits ``offset ... offset+k`` by descending score (ties: index order), as ``clip-zoo search`` ranks."""
        scores = self.emb @ np.asarray(query, np.float32)  # (R,)
        order = np.argsort(-scores, kind="stable")[offset:offset + k]
        return [{"rank": offset + n + 1, "id": self.items[i]["row"], "score": round(float(scores[i]), 6),
                 **{key: v for key, v in self.items[i].items() if key not in ("row",)}} for n, i in enumerate(order)]

    def image_path(self, row: int) -> Path:
        """The indexed file of image row ``row`` (only ids of the index, never a client's path)."""
        item = self.by_row.get(row)
        if item is None:
            raise ApiError(404, f"no indexed image with id {row}", "id", "not_found")
        return Path(item["path"])


class Service:
    """What the endpoints share: settings, the batcher with its model, metrics and the optional index."""

    def __init__(self, model: Optional[str], framework: Optional[str], threads: Optional[int], limits: Limits,
                 index: Optional[SearchIndex] = None, api_key: Optional[bytes] = None, max_batch: int = 64,
                 max_wait: float = 0.005, max_queue: int = 256, cors_origins: tuple = (),
                 precision: str = "fp32") -> None:
        from .serve_batcher import Batcher
        from .serve_metrics import Metrics

        self.model_spec, self.framework, self.threads, self.precision = model, framework, threads, precision
        self.model_id = "default" if model in (None, "default") else str(model)
        self.limits, self.index, self.api_key, self.cors_origins = limits, index, api_key, tuple(cors_origins)
        self.metrics = Metrics()
        self.batcher = Batcher(self._load, _forward, max_batch, max_wait, max_queue,
                               on_batch=self._observe_batch)
        self.metrics.gauge("clip_zoo_queue_depth", "Inputs waiting for the model.", lambda: self.batcher.depth)
        self.metrics.gauge("clip_zoo_model_ready", "1 once the model is loaded.",
                           lambda: int(self.batcher.ready.is_set()))
        workers = threads or min(4, os.cpu_count() or 1)
        self.decode_pool = ThreadPoolExecutor(workers, thread_name_prefix="clip-zoo-decode")
        self.on_load_error = None  # called (from the worker thread) when the model cannot be loaded
        self.accepted = self.answered = 0  # HTTP requests that reached the application / got their answer

    def _observe_batch(self, n: int, seconds: float) -> None:
        self.metrics.batch_size.observe(n)
        self.metrics.batch_seconds.observe(seconds)

    def _load(self):
        from .engines import load_encoder

        try:
            runtime = {"runtime": "onnx"} if self.framework == "onnx" else {}  # the framework-free engine
            encoder = load_encoder(self.model_spec, self.framework, self.threads, precision=self.precision, **runtime)
            encoder.tokenizer  # built here, on the model thread, not racily by the first requests
            if self.index is not None and encoder.dim != self.index.dim:
                raise CLIZooError(f"the index is {self.index.dim}-dimensional but model {self.model_id} gives "
                                  f"{encoder.dim}, serve with the model that made it ({self.index.meta.get('model')})")
        except BaseException as err:
            if self.on_load_error is not None:
                self.on_load_error(err)
            raise
        return encoder


def _forward(encoder, kind: str, values: list):
    """One batched forward on the model thread: texts → ``[(vector, tokens)]``, pixels → ``(N, D)``."""
    from .classify import check_finite

    if kind == "text":
        emb = check_finite(encoder.encode_texts(values), "a text")
        return list(zip(emb, _token_counts(encoder, values)))
    return check_finite(encoder.encode_images(np.stack(values)), "an image")  # (N, D)


def _token_counts(encoder, texts: list) -> list[int]:
    """Tokens per text after truncation (the attention mask's sum; SigLIP's tokenizer returns no mask)."""
    enc = encoder.tokenizer(texts, truncation=True, max_length=encoder.context_length, return_tensors="np")
    if "attention_mask" in enc:
        return np.asarray(enc["attention_mask"]).sum(axis=1).tolist()
    return [len(encoder.tokenizer([t], truncation=True, max_length=encoder.context_length)["input_ids"][0])
            for t in texts]


def _resolve_model(args: argparse.Namespace, index: Optional[SearchIndex]) -> tuple[Optional[str], Optional[str]]:
    """The model and framework to serve: the flags, else the ones that made the index; checked now
    so a wrong flag is a one-line error before the server starts."""
    from .engines import resolve_framework, resolve_model

    model = args.model if args.model is not None else (index.meta.get("model") if index else None)
    if getattr(args, "runtime", "framework") == "onnx":
        if args.model is None:
            raise CLIZooError("--runtime onnx needs --model DIR, a directory written by `clip-zoo export --to onnx`")
        resolve_model(model)
        return model, "onnx"
    framework = args.framework or (index.meta.get("framework") if index else None)
    resolve_model(model)
    return model, resolve_framework(framework)


def _import_server():
    """uvicorn, or a one-line error naming the ``serve`` extra when a piece of it is missing."""
    import importlib.util

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise CLIZooError(f"clip-zoo serve needs {err.name}, install it with: pip install 'clip-zoo[serve]'") from None
    if not any(importlib.util.find_spec(m) for m in ("python_multipart", "multipart")):  # uploads need it
        raise CLIZooError("clip-zoo serve needs python-multipart, install it with: pip install 'clip-zoo[serve]'")
    return uvicorn


def _server_class(uvicorn):
    """uvicorn's Server, except that a SIGTERM/SIGINT is not raised again after the graceful shutdown
    (uvicorn re-raises it, which kills the process before it reports what it answered)."""
    import contextlib
    import signal

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def build_service(args: argparse.Namespace) -> Service:
    """The :class:`Service` the command line describes (every input checked, the model not loaded yet)."""
    from .engines import check_threads

    _check_args(args)
    check_threads(args.threads)
    api_key = read_api_key(args.api_key_env)
    index = SearchIndex(args.index) if args.index else None
    model, framework = _resolve_model(args, index)
    limits = Limits(max_body=int(args.max_body_mb * 1024 * 1024), max_inputs=args.max_inputs,
                    max_text_chars=args.max_text_chars, max_pixels=args.max_pixels)
    return Service(model, framework, args.threads, limits, index, api_key, args.max_batch,
                   args.max_wait_ms / 1000.0, args.max_queue, args.cors_origin, args.precision)


def run(args: argparse.Namespace) -> int:
    uvicorn = _import_server()
    service = build_service(args)
    from .serve_app import create_app

    # keep-alive 30 s (uvicorn: 5 s): a proxy in front should close idle connections sooner than that
    config = uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level="warning",
                            access_log=False, limit_concurrency=args.max_connections, timeout_graceful_shutdown=60,
                            timeout_keep_alive=30, lifespan="on", server_header=False)
    server = _server_class(uvicorn)(config)
    failed: list = []

    def load_failed(err: BaseException) -> None:
        failed.append(err)
        server.should_exit = True

    service.on_load_error = load_failed
    index = f", index {service.index.path} ({len(service.index.items)} items)" if service.index else ""
    print(f"clip-zoo serve: http://{args.host}:{args.port}/ (model {service.model_id}, {service.framework}{index}); "
          "loading the model", file=sys.stderr, flush=True)
    server.run()
    if failed:
        raise failed[0]
    print(f"clip-zoo serve: stopped; {service.accepted} requests accepted, {service.answered} answered",
          file=sys.stderr, flush=True)
    return 0 if server.started else 1
