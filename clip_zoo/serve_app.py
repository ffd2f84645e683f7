"""The FastAPI application of ``clip-zoo serve``: the guard middleware and the endpoints.

:class:`Guard` (pure ASGI, outermost of our code) enforces the body limit while reading the body,
checks the API key with ``hmac.compare_digest``, records metrics, and turns any unexpected
exception into a ``500`` JSON error without details (the traceback goes to the server's log only).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import sys
import time
import traceback
from collections import OrderedDict
from typing import Any

import numpy as np

from .serve import Service
from .serve_batcher import Closed, NotReady, QueueFull
from .serve_inputs import ApiError, decode_image

__all__ = ["create_app", "Guard", "embedding_response", "LRU"]

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz"})  # no API key needed (the page asks for one itself)
ENDPOINTS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/embeddings", "/classify",
                       "/search"})
_WEIGHTS_CACHE = 32  # label sets whose classifier is kept


def _json_response(status: int, body: dict, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Body limit, API key, metrics and last-resort error handling for every HTTP request."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    def _endpoint(self, path: str) -> str:
        if path in ENDPOINTS:
            return path
        return "/thumbnails" if path.startswith("/thumbnails/") else "other"  # bounded label values

    def _auth_error(self, scope) -> ApiError | None:
        key = self.service.api_key
        if key is None or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":  # CORS preflights carry no key
            return None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        given = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"").strip()
        challenge = {"WWW-Authenticate": "Bearer"}
        if not given:
            return ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                            "Authorization", "missing_api_key", challenge)
        if not hmac.compare_digest(given, key):
            return ApiError(401, "wrong API key", "Authorization", "invalid_api_key", challenge)
        return None

    async def _read_body(self, scope, receive) -> bytes | None:
        """The whole body, or ``None`` as soon as it exceeds the limit (declared or streamed)."""
        limit = self.service.limits.max_body
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        service, start = self.service, time.perf_counter()
        endpoint, status = self._endpoint(scope["path"]), [500]
        started = [False]
        service.accepted += 1
        service.metrics.enter()

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                started[0], status[0] = True, message["status"]
            await send(message)

        try:
            error = self._auth_error(scope)
            body = None if error else await self._read_body(scope, receive)
            if error is None and body is None:
                error = ApiError(413, f"the request body is larger than the limit of {service.limits.max_body:,} "
                                      "bytes", "body", "body_too_large")
            if error is not None:
                await _json_response(error.status, error.body(), error.headers)(scope, receive, send_status)
                return
            replayed = [False]

            async def replay():
                if not replayed[0]:
                    replayed[0] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_status)
        except ConnectionError:
            status[0] = 499  # the client went away
        except Exception:  # never a stack trace to the client: log it here, answer a plain 500
            traceback.print_exc(file=sys.stderr)
            if not started[0]:
                err = ApiError(500, "internal server error (see the server log)", None, "internal_error")
                await _json_response(500, err.body())(scope, receive, send_status)
        finally:
            service.answered += 1
            service.metrics.leave(endpoint, status[0], time.perf_counter() - start)


# ----------------------------------------------------------------------------- helpers of the endpoints
async def _encode(service: Service, kind: str, values: list) -> list:
    """Run ``values`` through the batcher; backpressure and loading become 503 + Retry-After."""
    try:
        futures = service.batcher.submit(kind, values)
    except QueueFull:
        service.metrics.rejected.inc("queue_full")
        raise ApiError(503, "the server is overloaded (queue full), retry later", None, "overloaded",
                       {"Retry-After": "1"}) from None
    except NotReady:
        service.metrics.rejected.inc("not_ready")
        raise ApiError(503, "the model is still loading, retry later", None, "not_ready", {"Retry-After": "2"}) from None
    except Closed:
        service.metrics.rejected.inc("shutting_down")
        raise ApiError(503, "the server is shutting down", None, "shutting_down", {"Retry-After": "5"}) from None
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))


async def _decode_images(service: Service, blobs: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """Decode and preprocess ``(param, bytes)`` images on the decode pool (never on the event loop; a small
    pool, so decoding cannot crowd out the model's threads nor hold many decoded images at once)."""
    if not service.batcher.ready.is_set():
        await _encode(service, "image", [])  # raises the 503 of a loading model
    loop = asyncio.get_running_loop()
    processor, limit = service.batcher.model.processor, service.limits.max_pixels
    return list(await asyncio.gather(*(loop.run_in_executor(service.decode_pool, decode_image, data, processor,
                                                            limit, param) for param, data in blobs)))


async def _embed_items(service: Service, items: list[tuple[str, Any, str]]) -> tuple[list[np.ndarray], int]:
    """``[(kind, text or image bytes, param)]`` → vectors in order, and the text tokens used."""
    images = [(p, v) for k, v, p in items if k == "image"]
    texts = [v for k, v, _ in items if k == "text"]
    pixels = await _decode_images(service, images) if images else []
    parts = await asyncio.gather(_encode(service, "text", texts) if texts else _none(),
                                 _encode(service, "image", pixels) if pixels else _none())
    text_out, image_out = iter(parts[0]), iter(parts[1])
    vectors, tokens = [], 0
    for kind, _, _ in items:
        if kind == "text":
            vec, n = next(text_out)
            vectors.append(vec)
            tokens += int(n)
        else:
            vectors.append(next(image_out))
    return vectors, tokens


async def _none() -> list:
    return []


async def _request_body(request, form_fields: tuple[str, ...]) -> tuple[dict, list[tuple[str, Any, str]]]:
    """A JSON object, or a multipart form → (its text fields, its files and ``input`` fields in order)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        limits = request.app.state.service.limits
        form = await request.form(max_files=limits.max_inputs, max_fields=limits.max_inputs + 16)
        fields, items = {}, []
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an uploaded file
                items.append(("image", await value.read(), f"{key}[{len(items)}]"))
            elif key in form_fields:
                items.append(("text", value, f"{key}[{len(items)}]"))
            else:
                fields[key] = value
        return fields, items
    if ctype not in ("application/json", ""):
        raise ApiError(415, f"unsupported content type {ctype!r}: send application/json or multipart/form-data",
                       "Content-Type", "unsupported_media_type")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({str(err)[:120]})", "body", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the request body must be a JSON object, got {type(body).__name__}", "body", "wrong_type")
    return body, []


def _form_int(fields: dict, key: str) -> None:
    """Multipart fields arrive as text: whole numbers are converted for the shared checks."""
    value = fields.get(key)
    if isinstance(value, str):
        try:
            fields[key] = int(value)
        except ValueError:
            raise ApiError(422, f"field {key!r} must be a whole number, got {value[:40]!r}", key, "wrong_type") from None


def create_app(service: Service):
    """The FastAPI application serving ``service``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from . import serve_routes

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        try:
            yield
        finally:  # after uvicorn answered every accepted request: finish what is queued, stop the worker
            await asyncio.get_running_loop().run_in_executor(None, service.batcher.close)
            service.decode_pool.shutdown(wait=True)

    app = FastAPI(title="clip-zoo serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return _json_response(err.status, err.body(), err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        message = err.detail if isinstance(err.detail, str) else "bad request"
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "bad_request")
        return _json_response(err.status_code, ApiError(err.status_code, message, None, code).body(),
                              getattr(err, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _json_response(422, ApiError(422, f"field {param!r}: {first.get('msg', 'invalid')}", param,
                                            "wrong_type").body())

    serve_routes.add_routes(app, service)
    if service.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(service.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-API-Key"])
    app.add_middleware(Guard, service=service)
    return app


def embedding_response(vectors: list[np.ndarray], model: str, tokens: int, encoding: str) -> dict:
    """The OpenAI embeddings response body."""
    def encode(v: np.ndarray):
        v = np.asarray(v, np.float32)
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if encoding == "base64" else v.tolist()

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class LRU(OrderedDict):
    """A tiny least-recently-used dict (the classifier weights of recent label sets)."""

    def get_or_none(self, key):
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _WEIGHTS_CACHE:
            self.popitem(last=False)

