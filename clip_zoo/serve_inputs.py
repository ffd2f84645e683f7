"""Request validation of ``clip-zoo serve``: every bad field becomes an :class:`ApiError` (a 4xx JSON
error naming the field), images are decoded with the same pixel limits as the command line.

Status codes: 400 malformed (not JSON, bad base64, not an image), 401 API key, 404 unknown model /
no index / unknown id, 413 too large (body, image pixels, number of inputs), 415 content type,
422 a field missing, of the wrong type or out of range.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

__all__ = ["ApiError", "Limits", "parse_inputs", "decode_image", "decode_base64_image", "require",
           "optional_int", "check_text", "check_model"]

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S)


class ApiError(Exception):
    """An HTTP error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_body: int = 8 * 1024 * 1024  # bytes
    max_inputs: int = 256  # inputs per /v1/embeddings request
    max_text_chars: int = 2000  # characters per text (the model reads at most 77 tokens of it)
    max_pixels: int = 40_000_000  # per image, before and after resizing
    max_labels: int = 1000
    max_top_k: int = 100
    max_offset: int = 10_000


def require(body: dict, key: str, types: tuple, what: str) -> Any:
    """``body[key]``, which must be present and of ``types``."""
    if key not in body or body[key] is None:
        raise ApiError(422, f"missing field {key!r}: {what}", key, "missing_field")
    value = body[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise ApiError(422, f"field {key!r} must be {what}, got {type(value).__name__}", key, "wrong_type")
    return value


def optional_int(body: dict, key: str, default: int, low: int, high: int) -> int:
    """``body[key]`` as a whole number in ``low ... high`` (``default`` when absent)."""
    if body.get(key) is None:
        return default
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(422, f"field {key!r} must be a whole number, got {type(value).__name__}", key, "wrong_type")
    if not low <= value <= high:
        raise ApiError(422, f"field {key!r} must be between {low} and {high}, got {value}", key, "out_of_range")
    return value


def check_text(text: str, param: str, limits: Limits) -> str:
    """A non-empty, valid-Unicode text of at most ``limits.max_text_chars`` characters."""
    if not text.strip():
        raise ApiError(422, f"{param} is an empty text", param, "empty_input")
    if len(text) > limits.max_text_chars:
        raise ApiError(413, f"{param} has {len(text):,} characters, more than the limit of "
                            f"{limits.max_text_chars:,}", param, "text_too_long")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{param} is not valid Unicode (a lone surrogate escape)", param, "invalid_text") from None
    return text


def check_model(body: dict, served: str) -> None:
    """The optional ``model`` field must name the served model."""
    if body.get("model") is None:
        return
    model = body["model"]
    if not isinstance(model, str):
        raise ApiError(422, f"field 'model' must be a string, got {type(model).__name__}", "model", "wrong_type")
    if model != served:
        raise ApiError(404, f"unknown model {model[:100]!r}: this server serves {served!r} (see GET /v1/models)",
                       "model", "model_not_found")


def decode_base64_image(value: str, param: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL (or of bare base64)."""
    payload = value
    if value.startswith("data:"):
        m = _DATA_URL.fullmatch(value)
        if m is None:
            raise ApiError(400, f"{param} is not a base64 data URL (data:image/png;base64,...)", param, "invalid_data_url")
        mime, payload = m.group(1) or "", m.group(3)
        if not mime.startswith("image/"):
            raise ApiError(415, f"{param} is a data URL of {mime or 'no media type'}, not an image", param,
                           "unsupported_media_type")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param, "invalid_base64") from None
    if not data:
        raise ApiError(422, f"{param} holds an empty image", param, "empty_input")
    return data


def parse_inputs(value: Any, limits: Limits, param: str = "input") -> list[tuple[str, Any, str]]:
    """OpenAI ``input`` (a string or a list of strings) → ``[("text", str, param) | ("image", bytes, param)]``.

    A string starting with ``data:`` is an image data URL; any other string is a text."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ApiError(422, f"field {param!r} must be a string or a list of strings, got {type(value).__name__}",
                       param, "wrong_type")
    if not items:
        raise ApiError(422, f"field {param!r} is an empty list", param, "empty_input")
    if len(items) > limits.max_inputs:
        raise ApiError(413, f"field {param!r} holds {len(items):,} inputs, more than the limit of "
                            f"{limits.max_inputs:,} per request", param, "too_many_inputs")
    out = []
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if isinstance(value, list) else param
        if not isinstance(item, str):
            raise ApiError(422, f"{where} must be a string (a text or an image data URL), got "
                                f"{type(item).__name__}", where, "wrong_type")
        if item.startswith("data:"):
            out.append(("image", decode_base64_image(item, where), where))
        else:
            out.append(("text", check_text(item, where, limits), where))
    return out


def decode_image(data: bytes, processor, max_pixels: int, param: str) -> np.ndarray:
    """Image file bytes → ``(3, H, W)`` float32 pixels, refused from the header alone when too large."""
    from PIL import Image

    from .images import check_image_size, describe_error

    too_large = check_image_size(io.BytesIO(data), processor, max_pixels)
    if too_large:
        raise ApiError(413, f"{param}: the image is too large: {too_large.replace('--max-pixels', 'the limit')}",
                       param, "image_too_large")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return processor(im, return_tensors="np")["pixel_values"][0]  # (3, H, W)
    except Exception as err:  # any decoder failure is the client's file
        raise ApiError(400, f"{param} is not a readable image ({describe_error(err)})", param,
                       "invalid_image") from None
