"""The web service: API results, every error status, the limits, the batcher, the page's assets."""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import RUN_GENRES as GENRES
from conftest import RUN_INPUT_SIZE as INPUT_SIZE
from conftest import bomb_png, make_poster, make_run, run_cli, running_server
from fastapi.testclient import TestClient
from PIL import Image

from postergenre.predict import Predictor
from postergenre.serve import Limits, create_app
from postergenre.serve.app import STATIC
from postergenre.serve.batcher import Batcher


def jpeg_bytes(tmp_path: Path, seed: int = 0) -> bytes:
    return make_poster(tmp_path / f"p{seed}.jpg", seed=seed).read_bytes()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    torch.set_num_threads(1)
    return Predictor.load(make_run(tmp_path_factory.mktemp("run")), backend="torch")


@pytest.fixture(scope="module")
def client(predictor) -> Iterator[TestClient]:
    app = create_app(predictor, Limits(max_upload_bytes=200_000, max_batch_files=3))
    with TestClient(app) as c:
        yield c


def test_predict_matches_the_predictor(client, predictor, tmp_path):
    data = jpeg_bytes(tmp_path)
    r = client.post("/predict", files={"file": ("star wars.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = predictor.predict_files([data])[0]
    assert body["path"] == "star wars.jpg"
    assert list(body["scores"]) == GENRES
    assert body["title"] is None
    assert np.allclose([body["scores"][g] for g in GENRES], expected, atol=1e-4)
    top = [g for g, _ in body["top"]]
    assert top == [GENRES[j] for j in np.argsort(-expected)[:3]]
    assert [p for _, p in body["top"]] == sorted((p for _, p in body["top"]), reverse=True)


def test_batch_returns_each_file_in_order(client, tmp_path):
    posters = [jpeg_bytes(tmp_path, seed) for seed in range(3)]
    files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(posters)]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["path"] for x in results] == ["0.jpg", "1.jpg", "2.jpg"]
    for i, data in enumerate(posters):
        single = client.post("/predict", files={"file": (f"{i}.jpg", data)}).json()
        assert single == results[i]
    assert results[0]["scores"] != results[1]["scores"]


def test_genres_and_health(client):
    genres = client.get("/genres").json()
    assert genres["genres"] == GENRES
    assert genres["thresholds"] == pytest.approx(dict(zip(GENRES, [0.2, 0.4, 0.5, 0.6, 0.8],
                                                         strict=True)))
    health = client.get("/health").json()
    assert health == {"status": "ok", "model": "custom-cnn", "backend": "torch",
                      "genres": len(GENRES), "input_size": list(INPUT_SIZE)}


# -- errors: one status per kind of bad input, always JSON with a reason ----------------------


def error(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["detail"]


def test_not_an_image_is_415(client):
    r = client.post("/predict", files={"file": ("notes.txt", b"just some text", "text/plain")})
    assert "notes.txt: not an image" in error(r, 415)
    r = client.post("/predict", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert "empty.jpg" in error(r, 415)


def test_not_multipart_is_415(client):
    r = client.post("/predict", json={"url": "http://example.com/poster.jpg"})
    assert "multipart/form-data" in error(r, 415)


def test_truncated_image_is_422(client, tmp_path):
    data = jpeg_bytes(tmp_path)
    r = client.post("/predict", files={"file": ("cut.jpg", data[: len(data) // 2])})
    assert "cut.jpg: truncated" in error(r, 422)


def test_decompression_bomb_is_422(client):
    r = client.post("/predict", files={"file": ("bomb.png", bomb_png(), "image/png")})
    assert "bomb.png" in (detail := error(r, 422))
    assert "30000x30000" in detail or "decompression bomb" in detail


def test_tiny_image_is_422(client):
    buf = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buf, "PNG")
    assert "too small" in error(client.post("/predict", files={"file": ("px.png", buf.getvalue())}),
                                422)


def test_missing_or_text_field_is_422(client):
    assert "no file" in error(client.post("/predict", files={"other": ("a.jpg", b"x")}), 422)
    r = client.post("/predict", data={"file": "not a file"},
                    files={"unused": ("a.txt", b"x")})  # multipart with a text field
    assert "must be a file" in error(r, 422)


def test_upload_over_the_size_limit_is_413(client, tmp_path):
    # Under the request-body limit (multipart overhead allowed) but over the per-file limit.
    big = np.random.default_rng(0).integers(0, 255, 200_001, dtype=np.uint8).tobytes()
    assert "0.191 MB" in error(client.post("/predict", files={"file": ("big.jpg", big)}), 413)
    # Far over: refused from its Content-Length before the body is read.
    huge = big * 2
    assert "limit" in error(client.post("/predict", files={"file": ("huge.jpg", huge)}), 413)
    assert "big.jpg" in error(client.post("/predict/batch", files=[("files", ("big.jpg", big))]),
                              413)


def test_too_many_files_is_413(client, tmp_path):
    data = jpeg_bytes(tmp_path)
    files = [("files", (f"{i}.jpg", data)) for i in range(4)]
    assert "at most 3" in error(client.post("/predict/batch", files=files), 413)
    two = [("file", ("a.jpg", data)), ("file", ("b.jpg", data))]
    assert "at most 1" in error(client.post("/predict", files=two), 413)


def test_one_bad_file_in_a_batch_is_named(client, tmp_path):
    files = [("files", ("good.jpg", jpeg_bytes(tmp_path))), ("files", ("bad.gif", b"GIF89a..."))]
    assert error(client.post("/predict/batch", files=files), 415).startswith("bad.gif:")


def test_body_limit_stops_reading_a_streamed_upload(predictor):
    """Without a Content-Length the body is counted while it arrives: 413 long before its end."""
    app = create_app(predictor, Limits(max_upload_bytes=100_000))
    head = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunks = iter([head] + [b"\0" * 65_536] * 100)
    read, sent = 0, []

    async def receive():
        nonlocal read
        read += 1
        return {"type": "http.request", "body": next(chunks), "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict",
             "root_path": "", "scheme": "http", "query_string": b"", "server": ("t", 80),
             "client": ("t", 1), "http_version": "1.1", "app": app,
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 413
    assert "limit" in json.loads(body)["detail"]
    assert read < 5


def test_the_server_never_fetches_urls(client, httpserver):
    httpserver.expect_request("/poster.jpg").respond_with_data(b"x")
    url = httpserver.url_for("/poster.jpg")
    assert client.post("/predict", data={"file": url}, files={"x": ("x", b"")}).status_code == 422
    assert client.post("/predict", json={"file": url}).status_code == 415
    assert client.post("/predict", content=url.encode(),
                       headers={"content-type": "text/uri-list"}).status_code == 415
    assert len(httpserver.log) == 0


# -- the batcher ---------------------------------------------------------------------------------


def test_batcher_groups_waiting_requests_and_splits_results():
    sizes: list[int] = []
    gate = threading.Event()

    def fn(x: np.ndarray) -> np.ndarray:
        gate.wait(5)  # the first call holds the worker while the others queue up
        sizes.append(len(x))
        return x.sum(axis=1, keepdims=True) * 2

    batcher = Batcher(fn, max_batch=8)
    inputs = [np.full((1 + i % 2, 3), i, np.float32) for i in range(6)]
    futures = [batcher.submit(x) for x in inputs]
    gate.set()
    outputs = [f.result(5) for f in futures]
    batcher.close()
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(y, x.sum(axis=1, keepdims=True) * 2)
    assert sum(sizes) == sum(len(x) for x in inputs)
    assert max(sizes) > 2  # requests were grouped into one call


def test_batcher_passes_errors_to_every_waiting_request():
    def fn(x):
        raise ValueError("model failed")

    batcher = Batcher(fn)
    futures = [batcher.submit(np.zeros((1, 2))) for _ in range(3)]
    for f in futures:
        with pytest.raises(ValueError, match="model failed"):
            f.result(5)
    batcher.close()


# -- a real server on loopback -------------------------------------------------------------------


def test_real_server_handles_concurrent_requests_and_refuses_big_uploads(predictor, tmp_path):
    app = create_app(predictor, Limits(max_upload_bytes=100_000))
    posters = [jpeg_bytes(tmp_path, seed) for seed in range(8)]

    async def run(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            replies = await asyncio.gather(*(
                c.post("/predict", files={"file": (f"{i}.jpg", data)})
                for i, data in enumerate(posters)))
            too_big = await c.post("/predict", files={"file": ("big.jpg", b"\0" * 3_000_000)})
            return replies, too_big

    with running_server(app) as url:
        replies, too_big = asyncio.run(run(url))
    assert [r.status_code for r in replies] == [200] * 8
    expected = predictor.predict_files(posters)
    got = np.array([[r.json()["scores"][g] for g in GENRES] for r in replies])
    assert np.allclose(got, expected, atol=1e-4)
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]


# -- the page and the docs work offline ----------------------------------------------------------


def test_page_and_its_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert client.get("/" + asset).status_code == 200, asset
    for f in STATIC.iterdir():
        assert not re.search(r"https?://|//cdn", f.read_text(encoding="utf-8")), f.name


def test_docs_page_uses_no_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", docs.text)
    assert assets and not any(a.startswith(("http://", "https://", "//")) for a in assets)
    for asset in assets:
        if asset.startswith("/docs-assets"):
            assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict/batch"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["files"]["type"] == "array"
    assert {"413", "415", "422"} <= set(schema["paths"]["/predict"]["post"]["responses"])


def test_cli_serve_explains_itself_and_reports_a_bad_model(tmp_path):
    result = run_cli("serve", "--help")
    assert result.exit_code == 0 and "/predict" in result.output
    result = run_cli("serve", "--model", str(tmp_path / "nope"))
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {tmp_path / 'nope'}")
