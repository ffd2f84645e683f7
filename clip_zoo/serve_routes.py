"""The endpoints of ``clip-zoo serve`` (see :mod:`clip_zoo.serve` for the list)."""
from __future__ import annotations

import io
import time
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here

from .serve import Service
from .serve_app import LRU, _decode_images, _embed_items, _encode, _form_int, _request_body, embedding_response
from .serve_inputs import (ApiError, check_model, check_text, decode_base64_image, optional_int, parse_inputs,
                           require)

__all__ = ["add_routes", "THUMBNAIL_SIDE"]

THUMBNAIL_SIDE = 256  # thumbnails fit in 256 x 256 pixels
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; connect-src 'self'")


def _one_image(fields: dict, uploads: list, key: str, required: bool = True):
    """The single image of a request: one uploaded file, or ``fields[key]`` as a data URL / base64."""
    files = [(p, v) for k, v, p in uploads if k == "image"]
    if len(files) > 1:
        raise ApiError(422, f"send one image file, got {len(files)}", key, "too_many_inputs")
    if files:
        return files[0][1], files[0][0]
    if not required and fields.get(key) is None:
        return None, key
    value = require(fields, key, (str,), "a base64 data URL of an image (data:image/png;base64,...)")
    return decode_base64_image(value, key), key


def _labels(fields: dict, service: Service) -> list[str]:
    from clip_core import zero_shot as zs

    value = require(fields, "labels", (str, list), "a list of labels (or one comma-separated string)")
    if isinstance(value, list):
        bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
        if bad is not None:
            raise ApiError(422, f"labels[{bad}] must be a string, got {type(value[bad]).__name__}", f"labels[{bad}]",
                           "wrong_type")
    try:  # a string is always split on commas: a client never names a file of the server
        labels = zs.parse_labels(value.split(",") if isinstance(value, str) else value)
    except ValueError as err:
        raise ApiError(422, f"field 'labels': {err}", "labels", "invalid_labels") from None
    if len(labels) > service.limits.max_labels:
        raise ApiError(413, f"field 'labels' holds {len(labels)} labels, more than the limit of "
                            f"{service.limits.max_labels}", "labels", "too_many_inputs")
    for i, label in enumerate(labels):
        check_text(label, f"labels[{i}]", service.limits)
    return labels


def _templates(fields: dict) -> tuple[str, ...]:
    from clip_core import zero_shot as zs

    value = fields.get("templates") if fields.get("templates") is not None else "simple"
    if isinstance(value, str):  # only the named sets: a client never names a file of the server
        if value not in zs.TEMPLATE_SETS:
            raise ApiError(422, f"unknown template set {value[:40]!r}, use one of {', '.join(zs.TEMPLATE_SETS)} or a "
                                "list of templates", "templates", "invalid_templates")
        return zs.TEMPLATE_SETS[value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.count("{}") == 1 for t in value):
        raise ApiError(422, "field 'templates' must be a template set name or a non-empty list of strings with one "
                            "'{}' each", "templates", "invalid_templates")
    return tuple(value)


async def _classifier(service: Service, cache: LRU, labels: list[str], templates: tuple) -> np.ndarray:
    """The ``(D, L)`` zero-shot classifier of ``labels`` x ``templates`` (prompts embedded by the batcher)."""
    from clip_core import zero_shot as zs

    key = (tuple(labels), templates)
    weights = cache.get_or_none(key)
    if weights is None:
        prompts = zs.build_prompts(labels, templates)
        if len(prompts) > service.batcher.max_queue:
            raise ApiError(413, f"{len(labels)} labels x {len(templates)} templates = {len(prompts)} prompts, more "
                                f"than the server's queue of {service.batcher.max_queue}", "labels", "too_many_inputs")
        rows = np.stack([v for v, _ in await _encode(service, "text", prompts)])  # (L*T, D)
        weights = zs.zero_shot_weights_from_embeddings(rows.reshape(len(labels), len(templates), -1))
        cache.put(key, weights)
    return weights


def _thumbnail(path: Path, max_pixels: int) -> bytes:
    """A JPEG of the indexed image ``path`` fitting in THUMBNAIL_SIDE² (refused when too large to decode)."""
    from PIL import Image

    from .images import check_image_size

    if not path.is_file():
        raise ApiError(404, "the indexed image file is no longer there", "id", "not_found")
    if check_image_size(str(path), None, max_pixels):
        raise ApiError(404, "the indexed image is too large to make a thumbnail of", "id", "not_found")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=85)
            return out.getvalue()
    except Exception:
        raise ApiError(404, "the indexed image cannot be read", "id", "not_found") from None


def add_routes(app, service: Service) -> None:
    """Register every endpoint of ``service`` on ``app``."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response

    from clip_core import zero_shot as zs

    from .serve_metrics import CONTENT_TYPE

    page = resources.files("clip_zoo").joinpath("serve_page.html").read_text("utf-8")
    weights_cache, thumbs = LRU(), LRU()
    limits = service.limits

    @app.get("/")
    async def search_page():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.batcher.ready.is_set():
            return {"status": "ready", "model": service.model_id, "framework": service.framework,
                    "index": len(service.index.items) if service.index else None}
        status = "failed" if service.batcher.load_error is not None else "loading"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "2"})

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "owned_by": "clip-zoo"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        fields, uploads = await _request_body(request, ("input",))
        check_model(fields, service.model_id)
        encoding = fields.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(422, f"field 'encoding_format' must be 'float' or 'base64', got {str(encoding)[:40]!r}",
                           "encoding_format", "invalid_value")
        if uploads:
            if len(uploads) > limits.max_inputs:
                raise ApiError(413, f"{len(uploads)} inputs, more than the limit of {limits.max_inputs} per request",
                               "file", "too_many_inputs")
            items = [(k, check_text(v, p, limits) if k == "text" else v, p) for k, v, p in uploads]
        else:
            items = parse_inputs(require(fields, "input", (str, list), "a string or a list of strings"), limits)
        vectors, tokens = await _embed_items(service, items)
        dims = fields.get("dimensions")
        if dims is not None and dims != len(vectors[0]):
            raise ApiError(422, f"field 'dimensions' must be {len(vectors[0])} (this model's size) or absent",
                           "dimensions", "invalid_value")
        return embedding_response(vectors, service.model_id, tokens, encoding)

    @app.post("/classify")
    async def classify(request: Request):
        fields, uploads = await _request_body(request, ())
        check_model(fields, service.model_id)
        if uploads:
            _form_int(fields, "top_k")
        image, param = _one_image(fields, uploads, "image")
        labels, templates = _labels(fields, service), _templates(fields)
        top_k = optional_int(fields, "top_k", min(5, len(labels)), 1, len(labels))
        pixels = await _decode_images(service, [(param, image)])
        weights = await _classifier(service, weights_cache, labels, templates)
        emb = np.stack(await _encode(service, "image", pixels))  # (1, D)
        idx, val = zs.top_k(zs.zero_shot_probs(emb, weights, *service.batcher.model.probability_params), top_k)
        return {"model": service.model_id, "predictions": [{"label": labels[int(i)], "probability": round(float(p), 6)}
                                                           for i, p in zip(idx[0], val[0])]}

    @app.post("/search")
    async def search(request: Request):
        start = time.perf_counter()
        if service.index is None:
            raise ApiError(404, "this server has no index, start it with --index EMBEDDINGS", None, "no_index")
        fields, uploads = await _request_body(request, ())
        check_model(fields, service.model_id)
        if uploads:
            _form_int(fields, "top_k")
            _form_int(fields, "offset")
        top_k = optional_int(fields, "top_k", 12, 1, limits.max_top_k)
        offset = optional_int(fields, "offset", 0, 0, limits.max_offset)
        image, param = _one_image(fields, uploads, "image", required=False)
        if image is not None:
            kind, q = "image", (await _encode(service, "image", await _decode_images(service, [(param, image)])))[0]
        else:
            text = check_text(require(fields, "query", (str,), "a text (or send 'image')"), "query", limits)
            kind, q = "text", (await _encode(service, "text", [text]))[0][0]
        hits = service.index.search(q, offset, top_k)
        for h in hits:
            if h.get("kind") == "image":
                h["thumbnail"] = f"/thumbnails/{h['id']}"
        return {"model": service.model_id, "query_kind": kind, "total": len(service.index.items), "offset": offset,
                "top_k": top_k, "latency_ms": round(1000 * (time.perf_counter() - start), 2), "results": hits}

    @app.get("/thumbnails/{item_id}")
    async def thumbnail(item_id: str):
        if service.index is None:
            raise ApiError(404, "this server has no index, start it with --index EMBEDDINGS", "id", "no_index")
        if not item_id.isdigit() or len(item_id) > 12:
            raise ApiError(404, "thumbnails are named by the index's ids (whole numbers)", "id", "not_found")
        row = int(item_id)
        data = thumbs.get_or_none(row)
        if data is None:
            data = await run_in_threadpool(_thumbnail, service.index.image_path(row), limits.max_pixels)
            thumbs.put(row, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
