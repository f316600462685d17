"""The defaults of `export`, `serve` and `data` (training's are in train/recipes.py): plain
values with no imports, read by the library modules that use them and by the CLI for its
options and help (which thus never restates a default nor loads torch to show one)."""

from __future__ import annotations

# export.py: the ONNX graph and its int8 check (evaluate/int8.py)
ONNX_OPSET = 17  # the exporter accepts MIN_OPSET..MAX_OPSET
MIN_OPSET, MAX_OPSET = 9, 20
INT8_MAX_AP_DROP = 0.005  # the most held-out macro AP an int8 graph may lose
INT8_SPLITS = ("val", "test")  # where the check may score (the first by default): posters
# the run did not train on

# serve/: the HTTP service
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
SERVE_LOG_LEVEL = "info"
MAX_UPLOAD_MB = 10.0  # per poster file
MAX_BATCH_FILES = 16  # per /predict/batch call

# data/download.py
DOWNLOAD_CONCURRENCY = 16  # simultaneous requests
DOWNLOAD_TIMEOUT = 30.0  # seconds per attempt, whole body included
DOWNLOAD_RETRIES = 3  # extra attempts after a transient failure
MAX_POSTER_BYTES = 5_000_000  # larger bodies are refused (real posters are ~15 kB)

# data/prepare.py: the stratified split
SPLIT_SEED = 0
VAL_SHARE = 0.15
TEST_SHARE = 0.15
