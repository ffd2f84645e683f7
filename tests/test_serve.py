"""``clip-zoo serve``: the real server (uvicorn in a subprocess, bundled model, torch) on a loopback port.

Equality with ``clip-zoo embed``, 64 concurrent clients through the micro-batcher, every bad-request
case, backpressure, and SIGTERM under load. The unit tests of the batcher and the metrics run in-process.
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from serve_helpers import (TEXTS, assert_vectors, data_url, error_of, make_collection, metric, start_server)

pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

KEY = "s3cret-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The load test's model thread sleeps this long before each forward (a test hook): the tiny model is then
# slower than the HTTP layer and the clients, as a real model is, so the requests in flight pile up and
# share forwards however slowly a loaded machine runs the clients.
BATCH_DELAY = 1.0


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(collection):
    srv = start_server(collection.folder.parent, "--index", str(collection.npy), "--max-body-mb", "1",
                       "--max-inputs", "64", "--api-key-env", "CLIP_ZOO_TEST_KEY", "--cors-origin", "http://allowed.test",
                       env={"CLIP_ZOO_TEST_KEY": KEY})
    yield srv
    srv.stop()


def post(server, path, **kw):
    headers = {**AUTH, **kw.pop("headers", {})}
    return httpx.post(server.url + path, headers=headers, timeout=60, **kw)


# ----------------------------------------------------------------------------- results
def test_embeddings_equal_clip_zoo_embed(server, collection):
    """Texts and data-URL images in one OpenAI-format request give `clip-zoo embed`'s vectors."""
    images = collection.images[:5]
    inputs = [TEXTS[0], data_url(images[0]), TEXTS[1], *map(data_url, images[1:]), TEXTS[2]]
    resp = post(server, "/v1/embeddings", json={"input": inputs, "model": "default"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "list" and body["model"] == "default"
    assert [d["index"] for d in body["data"]] == list(range(len(inputs)))
    assert all(d["object"] == "embedding" for d in body["data"])
    want = [collection.vectors[TEXTS[0]], collection.vectors[str(images[0])], collection.vectors[TEXTS[1]],
            *(collection.vectors[str(p)] for p in images[1:]), collection.vectors[TEXTS[2]]]
    assert_vectors([d["embedding"] for d in body["data"]], want)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_embeddings_multipart_and_base64_encoding(server, collection):
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in collection.images[5:8]]
    resp = post(server, "/v1/embeddings", files=files, data={"input": TEXTS[3]})  # httpx sends the fields first
    assert resp.status_code == 200, resp.text
    want = [collection.vectors[TEXTS[3]]] + [collection.vectors[str(p)] for p in collection.images[5:8]]
    assert_vectors([d["embedding"] for d in resp.json()["data"]], want)
    resp = post(server, "/v1/embeddings", json={"input": TEXTS[3], "encoding_format": "base64"})
    raw = np.frombuffer(base64.b64decode(resp.json()["data"][0]["embedding"]), "<f4")
    assert_vectors(raw, collection.vectors[TEXTS[3]])


def test_search_matches_clip_zoo_search_and_pages(server, collection, capsys):
    from clip_zoo.__main__ import main

    assert main(["search", str(collection.npy), TEXTS[0], "--top-k", "6", "--json", "--framework", "torch"]) == 0
    want = json.loads(capsys.readouterr().out)
    resp = post(server, "/search", json={"query": TEXTS[0], "top_k": 6})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got["total"] == 48 and got["query_kind"] == "text"
    assert [h["path"] for h in got["results"]] == [h["path"] for h in want]
    np.testing.assert_allclose([h["score"] for h in got["results"]], [h["score"] for h in want], atol=1e-5)
    assert got["results"][0]["path"].endswith("00_red_circle.png")
    page2 = post(server, "/search", json={"query": TEXTS[0], "top_k": 3, "offset": 3}).json()
    assert [h["rank"] for h in page2["results"]] == [4, 5, 6]
    assert [h["path"] for h in page2["results"]] == [h["path"] for h in want[3:6]]
    thumb = httpx.get(server.url + got["results"][0]["thumbnail"], headers=AUTH)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"


def test_search_by_uploaded_image_and_classify(server, collection):
    img = collection.images[9]
    resp = post(server, "/search", files={"image": (img.name, img.read_bytes(), "image/png")}, data={"top_k": "2"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["path"] == str(img) and resp.json()["query_kind"] == "image"
    resp = post(server, "/classify", json={"image": data_url(collection.images[0]), "templates": "none",
                                           "labels": ["a photo of a red circle", "a photo of a blue square"]})
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert preds[0]["label"] == "a photo of a red circle" and preds[0]["probability"] > 0.5
    assert abs(sum(p["probability"] for p in preds) - 1) < 1e-4


def test_health_ready_models_page(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}  # open without a key
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "<title>clip-zoo search</title>" in page.text
    assert httpx.get(server.url + "/v1/models", headers=AUTH).json()["data"][0]["id"] == "default"


def test_cors_only_for_the_configured_origin(server):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = httpx.options(server.url + "/search", headers={"Origin": "http://allowed.test", **ask})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://allowed.test"
    other = httpx.options(server.url + "/search", headers={"Origin": "http://evil.test", **ask})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    resp = post(server, "/v1/embeddings", json={"input": "hi"}, headers={"Origin": "http://evil.test"})
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


# ----------------------------------------------------------------------------- load
@pytest.fixture
def slow_model_server(collection):
    srv = start_server(collection.folder.parent, "--max-wait-ms", "20", "--api-key-env", "CLIP_ZOO_TEST_KEY",
                       hooks=(f"clip_zoo.serve_batcher:_test_batch_delay={BATCH_DELAY}",), env={"CLIP_ZOO_TEST_KEY": KEY})
    yield srv
    srv.stop()


def test_64_clients_x_20_requests_batch_together(slow_model_server, collection):
    """1280 requests from 64 concurrent clients all succeed with the right vectors; mean batch > 8."""
    server = slow_model_server
    before = httpx.get(server.url + "/metrics", headers=AUTH).text
    inputs = [data_url(p) for p in collection.images[:4]] + TEXTS
    want = [collection.vectors[str(p)] for p in collection.images[:4]] + [collection.vectors[t] for t in TEXTS]

    async def client(c: int, http) -> list:
        out = []
        for r in range(20):
            k = (c + r) % len(inputs)
            resp = await http.post("/v1/embeddings", json={"input": inputs[k]}, headers=AUTH)
            out.append((k, resp.status_code, resp.json()["data"][0]["embedding"] if resp.status_code == 200 else None))
        return out

    async def main() -> list:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as http:
            return [x for part in await asyncio.gather(*(client(c, http) for c in range(64))) for x in part]

    results = asyncio.run(main())
    assert len(results) == 1280 and [s for _, s, _ in results].count(200) == 1280
    for k, _, vec in results:
        assert_vectors(vec, want[k])
    after = httpx.get(server.url + "/metrics", headers=AUTH).text
    forwards = metric(after, "clip_zoo_batch_size_count") - metric(before, "clip_zoo_batch_size_count")
    inputs_run = metric(after, "clip_zoo_batch_size_sum") - metric(before, "clip_zoo_batch_size_sum")
    assert inputs_run == 1280
    assert inputs_run / forwards > 8, f"mean batch size {inputs_run / forwards:.1f}"
    assert 'clip_zoo_requests_total{endpoint="/v1/embeddings",status="200"}' in after
    assert metric(after, "clip_zoo_queue_depth") == 0


# ----------------------------------------------------------------------------- bad requests, one test per case
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: nothing large is allocated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_oversized_body_is_413(server):
    resp = post(server, "/v1/embeddings", content=b'{"input": "' + b"a" * (1024 * 1024 + 10) + b'"}',
                headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and error_of(resp)["param"] == "body"

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(40):
            yield b"x" * 65536

    resp = post(server, "/v1/embeddings", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and error_of(resp)["param"] == "body"


def test_100_megapixel_image_is_413(server):
    url = "data:image/png;base64," + base64.b64encode(_png_header(10_000, 10_000)).decode()
    resp = post(server, "/v1/embeddings", json={"input": ["fine text", url]})
    err = error_of(resp)
    assert resp.status_code == 413 and err["param"] == "input[1]" and "100,000,000" in err["message"]
    resp = post(server, "/search", files={"image": ("big.png", _png_header(10_000, 10_000), "image/png")})
    assert resp.status_code == 413 and error_of(resp)["code"] == "image_too_large"


def test_malformed_base64_is_400(server):
    resp = post(server, "/v1/embeddings", json={"input": ["ok", "data:image/png;base64,iVBOR@@w0K!!"]})
    assert resp.status_code == 400 and error_of(resp)["param"] == "input[1]"
    resp = post(server, "/v1/embeddings", json={"input": "data:image/png;base64," + base64.b64encode(b"no image").decode()})
    assert resp.status_code == 400 and error_of(resp)["code"] == "invalid_image"
    resp = post(server, "/v1/embeddings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and error_of(resp)["code"] == "invalid_json"


@pytest.mark.parametrize("path, body, param", [
    ("/v1/embeddings", {"input": 5}, "input"),
    ("/v1/embeddings", {"input": ["ok", 3]}, "input[1]"),
    ("/v1/embeddings", {"input": "ok", "model": ["default"]}, "model"),
    ("/v1/embeddings", ["not", "an", "object"], "body"),
    ("/search", {"query": "ok", "top_k": "ten"}, "top_k"),
    ("/search", {"query": "ok", "top_k": 0}, "top_k"),
    ("/classify", {"image": "data:image/png;base64,AAAA", "labels": ["a", 1]}, "labels[1]"),
])
def test_wrong_types_are_422(server, path, body, param):
    resp = post(server, path, json=body)
    assert resp.status_code == 422 and error_of(resp)["param"] == param


@pytest.mark.parametrize("path, body, param", [
    ("/v1/embeddings", {}, "input"), ("/search", {"top_k": 3}, "query"),
    ("/classify", {"labels": ["a", "b"]}, "image"), ("/classify", {"image": "data:image/png;base64,AAAA"}, "labels"),
])
def test_missing_fields_are_422(server, path, body, param):
    resp = post(server, path, json=body)
    assert resp.status_code == 422 and error_of(resp)["param"] == param


def test_too_many_inputs_and_too_long_text_are_413(server):
    resp = post(server, "/v1/embeddings", json={"input": ["x"] * 65})
    assert resp.status_code == 413 and error_of(resp)["param"] == "input"
    resp = post(server, "/v1/embeddings", json={"input": ["ok", "y" * 2001]})
    assert resp.status_code == 413 and error_of(resp)["param"] == "input[1]"


def test_unknown_model_is_404(server):
    resp = post(server, "/v1/embeddings", json={"input": "hi", "model": "text-embedding-3-small"})
    err = error_of(resp)
    assert resp.status_code == 404 and err["param"] == "model" and err["code"] == "model_not_found"


def _raw_get(server, target: str) -> tuple[int, bytes]:
    """GET ``target`` byte for byte (no client-side path normalisation)."""
    host, port = server.url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("target", ["/thumbnails/../../../../etc/passwd", "/thumbnails/..%2F..%2F..%2Fetc%2Fpasswd",
                                    "/thumbnails/%2e%2e/emb.npy", "/thumbnails//etc/passwd", "/thumbnails/-1",
                                    "/thumbnails/48", "/thumbnails/0x1", "/thumbnails/1%00.png"])
def test_thumbnail_path_traversal_is_404(server, target):
    """Only the index's image ids give a thumbnail (48 is a text row): never a file named by the client."""
    status, data = _raw_get(server, target)
    assert status == 404 and b"root:" not in data and b"image/jpeg" not in data, data[:300]
    assert _raw_get(server, "/thumbnails/1")[0] == 200  # the control: a real id works


def test_missing_or_wrong_api_key_is_401(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"}, {"X-API-Key": ""}):
        resp = httpx.post(server.url + "/v1/embeddings", json={"input": "hi"}, headers=headers)
        err = error_of(resp)
        assert resp.status_code == 401 and err["param"] == "Authorization" and resp.headers["www-authenticate"] == "Bearer"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.post(server.url + "/v1/embeddings", json={"input": "hi"}, headers={"X-API-Key": KEY}).status_code == 200


def test_unsupported_content_type_and_unknown_route(server):
    resp = post(server, "/v1/embeddings", content=b"input=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415 and error_of(resp)["param"] == "Content-Type"
    resp = httpx.get(server.url + "/nope", headers=AUTH)
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"


# ----------------------------------------------------------------------------- backpressure and shutdown
def test_overload_gets_503_with_retry_after(collection):
    srv = start_server(collection.folder.parent, "--max-batch", "2", "--max-queue", "4", "--max-wait-ms", "1",
                       hooks=("clip_zoo.serve_batcher:_test_batch_delay=0.3",))
    try:
        async def burst():
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
                return await asyncio.gather(*(http.post("/v1/embeddings", json={"input": TEXTS[i % 4]})
                                              for i in range(24)))

        answers = asyncio.run(burst())
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503} and codes.count(200) >= 4, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and error_of(busy)["code"] == "overloaded"
        for r, i in zip(answers, range(24)):
            if r.status_code == 200:
                assert_vectors(r.json()["data"][0]["embedding"], collection.vectors[TEXTS[i % 4]])
        metrics = httpx.get(srv.url + "/metrics").text
        assert f'clip_zoo_rejected_total{{reason="queue_full"}} {codes.count(503)}' in metrics
        assert httpx.get(srv.url + "/healthz").status_code == 200  # still alive
        preflight = httpx.options(srv.url + "/v1/embeddings",
                                  headers={"Origin": "http://allowed.test", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers  # CORS is off by default
    finally:
        assert srv.stop() == 0


def test_sigterm_during_load_answers_every_accepted_request(collection):
    srv = start_server(collection.folder.parent, "--max-wait-ms", "5",
                       hooks=("clip_zoo.serve_batcher:_test_batch_delay=0.15",))
    outcomes, lock, stop_at = [], threading.Lock(), [None]

    def client(c: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=60, headers={"Connection": "close"}) as http:
            for r in range(10_000):
                try:
                    resp = http.post("/v1/embeddings", json={"input": TEXTS[(c + r) % 4]})
                    item = ((c + r) % 4, resp.status_code, resp.json(), time.monotonic())
                except httpx.TransportError as err:  # refused or closed before the application saw it
                    item = (None, type(err).__name__, None, time.monotonic())
                with lock:
                    outcomes.append(item)
                if item[0] is None:
                    return

    threads = [threading.Thread(target=client, args=(c,)) for c in range(24)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop_at[0] = time.monotonic()
    srv.proc.send_signal(15)
    for t in threads:
        t.join(90)
    assert srv.proc.wait(60) == 0
    answered = [o for o in outcomes if o[0] is not None]
    assert all(code == 200 for _, code, _, _ in answered), {code for _, code, _, _ in answered}
    for k, _, body, _ in answered:
        assert_vectors(body["data"][0]["embedding"], collection.vectors[TEXTS[k]])
    assert sum(t > stop_at[0] for *_, t in answered) > 0, "no request was in flight at SIGTERM"
    log = srv.log_text()
    counts = [line for line in log.splitlines() if "requests accepted" in line]
    assert counts, log
    n = len(answered) + srv.probes  # every request the application accepted was answered, and received
    assert f"stopped; {n} requests accepted, {n} answered" in counts[0], (counts, len(answered), srv.probes)
    assert "Traceback" not in log


def test_onnx_runtime_serves_the_same_vectors(collection, tmp_path):
    """`--runtime onnx` serves an exported model with onnxruntime: the torch engine's vectors."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("clip_zoo.export")
    from clip_zoo.__main__ import main

    exported = tmp_path / "default-onnx"
    assert main(["export", "default", str(exported), "--to", "onnx", "--framework", "torch"]) == 0
    srv = start_server(tmp_path, "--runtime", "onnx", "--model", str(exported))
    try:
        assert httpx.get(srv.url + "/readyz").json()["framework"] == "onnx"
        inputs = TEXTS[:2] + [data_url(p) for p in collection.images[:2]]
        resp = httpx.post(srv.url + "/v1/embeddings", json={"input": inputs}, timeout=60)
        assert resp.status_code == 200, resp.text
        want = [collection.vectors[t] for t in TEXTS[:2]] + [collection.vectors[str(p)] for p in collection.images[:2]]
        assert_vectors([d["embedding"] for d in resp.json()["data"]], want)
    finally:
        assert srv.stop() == 0


# ----------------------------------------------------------------------------- in-process units
def test_batcher_merges_concurrent_inputs_and_drains_on_close():
    from clip_zoo.serve_batcher import Batcher, Closed, QueueFull

    sizes = []

    def forward(model, kind, values):
        time.sleep(0.01)
        return [(kind, v * model) for v in values]

    b = Batcher(lambda: 2, forward, max_batch=8, max_wait=0.05, max_queue=20,
                on_batch=lambda n, s: sizes.append(n)).start()
    assert b.ready.wait(5)
    futures = [f for i in range(16) for f in b.submit("text" if i % 2 else "image", [i])]
    with pytest.raises(QueueFull):
        b.submit("text", list(range(20)))
    b.close()
    assert [f.result(0) for f in futures] == [("text" if i % 2 else "image", 2 * i) for i in range(16)]
    assert sorted(sizes) == [8, 8]  # two forwards, one per kind
    with pytest.raises(Closed):
        b.submit("text", [1])


def test_metrics_exposition_format():
    from clip_zoo.serve_metrics import Metrics

    m = Metrics()
    assert metric(m.render(), "clip_zoo_batch_size_count") == 0  # present before the first forward
    m.batch_size.observe(3)
    m.batch_size.observe(40)
    m.requests.inc("/search", "200")
    m.gauge("clip_zoo_queue_depth", "waiting", lambda: 7)
    text = m.render()
    assert 'clip_zoo_batch_size_bucket{le="4"} 1' in text and 'clip_zoo_batch_size_bucket{le="+Inf"} 2' in text
    assert 'clip_zoo_batch_size_bucket{le="32"} 1' in text and 'clip_zoo_batch_size_bucket{le="64"} 2' in text
    assert metric(text, "clip_zoo_batch_size_sum") == 43 and metric(text, "clip_zoo_queue_depth") == 7
    assert 'clip_zoo_requests_total{endpoint="/search",status="200"} 1' in text
    assert "# TYPE clip_zoo_request_seconds histogram" in text
