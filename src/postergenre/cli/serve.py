"""`postergenre serve [--model RUN] [--host 127.0.0.1] [--port 8000]`."""

from __future__ import annotations

from pathlib import Path

import typer

from postergenre.backends import BACKEND_HELP
from postergenre.defaults import (
    MAX_BATCH_FILES,
    MAX_UPLOAD_MB,
    SERVE_HOST,
    SERVE_LOG_LEVEL,
    SERVE_PORT,
)


def serve(
    model: Path | None = typer.Option(
        None, "--model", help="Run folder to serve (default: the model shipped with the package)."
    ),
    host: str = typer.Option(SERVE_HOST, help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(SERVE_PORT, min=0, max=65535, help="TCP port to listen on."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    max_upload_mb: float = typer.Option(MAX_UPLOAD_MB, min=0.001,
                                        help="Largest accepted poster file, MB."),
    max_batch_files: int = typer.Option(MAX_BATCH_FILES, min=1,
                                        help="Most files in one /predict/batch call."),
    log_level: str = typer.Option(SERVE_LOG_LEVEL,
                                  help="uvicorn log level (warning: no access log)."),
) -> None:
    """Serve the model over HTTP, with a page at / to try it in a browser.

    POST /predict: one multipart upload (field "file") -> the `predict --format json` object.

    POST /predict/batch: several files (field "files"). Also GET /genres, GET /health, /docs.

    Every asset is served by the app itself (it works offline); it never fetches URLs.
    """
    from postergenre.serve import Limits
    from postergenre.serve import serve as run_server

    limits = Limits(int(max_upload_mb * 1024 * 1024), max_batch_files)
    run_server(model, host=host, port=port, backend=backend, limits=limits, log_level=log_level)
