"""The web service: `create_app(predictor)` -> a FastAPI app scoring uploaded posters.

    GET  /               the page: drop or choose a poster, see its genre bars
    POST /predict        one multipart upload (field "file") -> {"path", "top", "scores"}
    POST /predict/batch  several files (field "files")     -> {"results": [...]}
    POST /explain        one upload (field "file"), ?genre=G optional -> Grad-CAM heat maps of
                         its top-3 genres (or of G) as PNG data URIs, to lay over the poster
    GET  /genres         the vocabulary and the tuned per-genre thresholds
    GET  /health         liveness and what is loaded
    GET  /docs, /openapi.json   the API, with Swagger UI served from the package (no CDN)

The model is loaded once (the predictor passed in); decoding runs in a thread pool and scoring
in one worker thread that batches concurrent requests (serve/batcher.py), so the event loop
never blocks. Bad input gets a JSON error `{"detail": "..."}` naming the file and the problem:
413 upload too large or too many files, 415 not an image (or not a multipart upload), 422 a
broken image (truncated, decompression bomb, too small) or a missing file field. The server
only reads what clients upload: it never fetches a URL.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from postergenre import __version__
from postergenre.defaults import MAX_BATCH_FILES, MAX_UPLOAD_MB
from postergenre.errors import InvalidImageError, NotAnImageError, PosterGenreError
from postergenre.predict import Predictor, json_record
from postergenre.serve.batcher import Batcher

MB = 1024 * 1024
STATIC = Path(__file__).parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # room for part headers and boundaries around the files
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = int(MAX_UPLOAD_MB * MB)  # per file
    max_batch_files: int = MAX_BATCH_FILES


# -- response bodies (they document the API in /openapi.json) --------------------------------


class PosterResult(BaseModel):
    path: str = Field(description="The uploaded file's name")
    title: str | None = Field(description="The title sent with the poster (null when none)")
    top: list[list[str | float]] = Field(description="The 3 best [genre, probability], best first")
    scores: dict[str, float] = Field(description="Every genre's probability, in vocabulary order")
    signals: list[str] = Field(description='What the scores used: ["poster"], or ["poster", '
                                           '"title"] when a title was fused (the model has a '
                                           "title model)")


class BatchResult(BaseModel):
    results: list[PosterResult]


class GenresInfo(BaseModel):
    genres: list[str]
    thresholds: dict[str, float]


class Health(BaseModel):
    status: str
    model: str
    backend: str
    genres: int
    input_size: list[int] = Field(description="The model's input [height, width]")


class GenreHeatmap(BaseModel):
    genre: str
    probability: float = Field(description="The genre's probability (the PyTorch fp32 model)")
    heatmap: str = Field(description="Grad-CAM heat map as a PNG data URI at the model's input "
                                     "size, transparent where cold: lay it over the poster")


class ExplainResult(BaseModel):
    path: str = Field(description="The uploaded file's name")
    explanations: list[GenreHeatmap]
    title_words: dict[str, list[list[str | float]]] | None = Field(
        None, description="With a title and a title model: per explained genre, the title's "
                          "[word, push on the genre's logit], largest first")


class ErrorBody(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A malformed multipart body"},
    413: {"model": ErrorBody, "description": "A file over the size limit, or too many files"},
    415: {"model": ErrorBody, "description": "Not an image, or not a multipart upload"},
    422: {"model": ErrorBody, "description": "A truncated or oversized image, or no file"},
}


MAX_TITLE_CHARS = 300


def _multipart(field: str, many: bool) -> dict[str, Any]:
    """OpenAPI request body for a multipart upload (parsed by hand to enforce the limits).
    The optional title text fields are described in each endpoint's text, not in the schema:
    a multipart text field cannot be told apart from a mistyped one."""
    file = {"type": "string", "format": "binary"}
    prop = {"type": "array", "items": file, "minItems": 1} if many else file
    schema = {"type": "object", "required": [field], "properties": {field: prop}}
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


def result_object(name: str, probabilities: np.ndarray, predictor: Predictor,
                  title: str | None = None, fused: bool = False) -> dict[str, Any]:
    """The predict command's JSON record for one uploaded poster (`predict.json_record`)."""
    top = predictor.top_k(probabilities[None])[0]
    signals = ["poster", "title"] if fused else ["poster"]
    return json_record(name, title or None, top, probabilities, predictor.genres, signals)


# -- limits --------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: a 413 as soon as a request body passes its path's byte limit.

    A declared Content-Length over the limit is refused before anything is read; otherwise the
    bytes are counted as they arrive, so an oversized upload is never read to its end.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, tuple[int, str]]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.limits:
            await self.app(scope, receive, send)
            return
        limit, message = self.limits[scope["path"]]
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": message}, 413)(scope, receive, send)
            return
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > limit:
                raise HTTPException(413, message)
            return event

        await self.app(scope, limited_receive, send)


async def read_uploads(request: Request, field: str, max_files: int, max_bytes: int,
                       text_field: str | None = None) -> tuple[list[tuple[str, bytes]],
                                                                list[str]]:
    """The (filename, bytes) of each file in a multipart form field, within the limits, and
    the values of the text field `text_field` (titles)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"expected a multipart/form-data upload with the poster in "
                                 f"field {field!r}, got {content_type or 'no content type'!r}")
    try:
        form = await request.form(max_files=max_files)
    except StarletteHTTPException as e:  # what Starlette's form parser raises
        if "too many files" in str(e.detail).lower():
            raise HTTPException(413, f"too many files: at most {max_files} per request") from None
        raise
    try:
        parts = form.getlist(field)
        if not parts:
            raise HTTPException(422, f"no file in form field {field!r}")
        uploads = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise HTTPException(422, f"form field {field!r} must be a file upload, not text")
            name = part.filename or f"upload {i + 1}"
            data = await part.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise HTTPException(413, f"{name}: over the {max_bytes / MB:.3g} MB upload limit")
            uploads.append((name, data))
        fields = form.getlist(text_field) if text_field else []
        texts = [t for t in fields if isinstance(t, str)]
        if len(texts) < len(fields):
            raise HTTPException(422, f"form field {text_field!r} must be text, not a file")
        if any(len(t) > MAX_TITLE_CHARS for t in texts):
            raise HTTPException(422, f"form field {text_field!r}: a title is at most "
                                     f"{MAX_TITLE_CHARS} characters")
    finally:
        await form.close()
    return uploads, [t.strip() for t in texts]


# -- the app -------------------------------------------------------------------------------------


def create_app(predictor: Predictor, limits: Limits | None = None,
               max_batch: int = 32, explainer: Any = None) -> FastAPI:
    """A FastAPI app serving `predictor` (loaded once, shared by every request). `/explain`
    uses `explainer` (an explain.Explainer), else one built from the predictor's run on the
    first request."""
    limits = limits or Limits()
    explainers = [explainer] if explainer is not None else []
    explainer_lock = threading.Lock()

    def get_explainer():
        with explainer_lock:
            if not explainers:
                from postergenre.explain import Explainer

                explainers.append(Explainer(predictor.run))
            return explainers[0]

    batcher = Batcher(predictor.predict_proba, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        batcher.close()

    app = FastAPIOffline(
        title="postergenre",
        version=__version__,
        description="Movie genres from a poster image: upload a poster, get a probability "
                    "for each genre. The page at `/` does the same in a browser.",
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    mb = f"{limits.max_upload_bytes / MB:.3g}"
    one = (limits.max_upload_bytes + MULTIPART_OVERHEAD,
           f"upload too large: over the {mb} MB limit")
    app.add_middleware(BodyLimit, limits={
        "/predict": one, "/explain": one,
        "/predict/batch": (limits.max_batch_files * limits.max_upload_bytes + MULTIPART_OVERHEAD,
                           f"request too large: over {limits.max_batch_files} files "
                           f"of {mb} MB"),
    })
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def decode(name: str, data: bytes) -> np.ndarray:
        try:
            return await run_in_threadpool(predictor.load_batch, [data])
        except InvalidImageError as e:
            status = 415 if isinstance(e, NotAnImageError) else 422
            raise HTTPException(status, f"{name}: {str(e).removeprefix('uploaded bytes: ')}") \
                from None

    async def score(uploads: list[tuple[str, bytes]], titles: list[str]
                    ) -> list[dict[str, Any]]:
        if len(titles) > len(uploads):
            raise HTTPException(422, f"{len(titles)} titles for {len(uploads)} files")
        titles = titles + [""] * (len(uploads) - len(titles))
        arrays = await asyncio.gather(*(decode(name, data) for name, data in uploads))
        probabilities = await batcher(np.concatenate(arrays))
        probabilities, fused = predictor.fuse(probabilities, titles)
        return [result_object(name, p, predictor, t, f) for (name, _), p, t, f
                in zip(uploads, probabilities, titles, fused, strict=True)]

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.post("/predict", response_model=PosterResult, responses=ERRORS,
              openapi_extra=_multipart("file", many=False))
    async def predict(request: Request) -> dict[str, Any]:
        """Genre probabilities for one poster (multipart field `file`). An optional text field
        `title` ("Nerve (2016)", at most 300 characters) is fused with the poster when the
        model has a title model; `signals` says whether it was."""
        uploads, titles = await read_uploads(request, "file", 1, limits.max_upload_bytes,
                                             "title")
        return (await score(uploads, titles[:1]))[0]

    @app.post("/predict/batch", response_model=BatchResult, responses=ERRORS,
              openapi_extra=_multipart("files", many=True))
    async def predict_batch(request: Request) -> dict[str, Any]:
        """Genre probabilities for several posters (repeated multipart field `files`), with
        optional text fields `titles` in the same order (empty for none)."""
        uploads, titles = await read_uploads(request, "files", limits.max_batch_files,
                                             limits.max_upload_bytes, "titles")
        return {"results": await score(uploads, titles)}

    @app.post("/explain", response_model=ExplainResult, responses=ERRORS,
              openapi_extra=_multipart("file", many=False))
    async def explain(request: Request, genre: str | None = Query(
            None, description="Explain this genre instead of the poster's top 3")
                      ) -> dict[str, Any]:
        """Why the model gives one poster (multipart field `file`) its top genres: Grad-CAM."""
        uploads, titles = await read_uploads(request, "file", 1, limits.max_upload_bytes,
                                             "title")
        name = uploads[0][0]
        image = (await decode(*uploads[0]))[0]
        explainer = await run_in_threadpool(get_explainer)
        if genre is not None and genre not in explainer.genres:
            raise HTTPException(422, f"genre {genre!r}: not a genre of this model")
        # the predictor decoded to floats; the explainer takes the same pixels as uint8
        pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        try:
            e = await run_in_threadpool(explainer.explain_array, pixels,
                                        [genre] if genre else None, 3, name,
                                        titles[0] if titles else None)
        except PosterGenreError as err:
            raise HTTPException(422, f"{name}: {err}") from None
        return {"path": name, "explanations": [
            {"genre": g, "probability": round(e.probability(g), 4),
             "heatmap": "data:image/png;base64,"
                        + base64.b64encode(e.heat_png(i)).decode("ascii")}
            for i, g in enumerate(e.genres)],
            "title_words": {g: [[w, round(c, 4)] for w, c in words[:8]]
                            for g, words in (e.title_words or {}).items()} or None}

    @app.get("/genres", response_model=GenresInfo)
    async def genres() -> dict[str, Any]:
        """The model's genres and the tuned threshold at which each one counts as predicted."""
        return {"genres": predictor.genres,
                "thresholds": {g: float(t) for g, t in
                               zip(predictor.genres, predictor.thresholds, strict=True)}}

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness, and which model is loaded."""
        return {"status": "ok", "model": predictor.run.model_name,
                "backend": predictor.backend.name, "genres": len(predictor.genres),
                "input_size": predictor.input_size}

    return app
