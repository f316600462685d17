"""The web service and its page: `create_app(predictor)` to embed or test, `serve()` to run."""

from __future__ import annotations

from pathlib import Path

from postergenre.defaults import SERVE_HOST, SERVE_LOG_LEVEL, SERVE_PORT
from postergenre.serve.app import Limits, create_app

__all__ = ["Limits", "create_app", "serve"]


def serve(model: str | Path | None = None, host: str = SERVE_HOST, port: int = SERVE_PORT,
          backend: str = "auto", limits: Limits | None = None,
          log_level: str = SERVE_LOG_LEVEL) -> None:
    """Load the model once and serve it with uvicorn until interrupted."""
    import uvicorn

    from postergenre.predict import Predictor

    predictor = Predictor.load(model, backend=backend)
    app = create_app(predictor, limits)
    what = f"{predictor.run.model_name} ({len(predictor.genres)} genres, {predictor.backend.name})"
    print(f"{what}: page http://{host}:{port}/ , API docs http://{host}:{port}/docs", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
