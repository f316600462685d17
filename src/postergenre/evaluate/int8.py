"""The int8 quality check: quantise a run's graph and accept it only if held-out quality holds.

`quantize_run(run, dataset)` writes RUN/int8.json when the int8 graph's macro AP on a held-out
split stays within `max_drop` of fp32's; the onnx backend then uses int8 (export.py,
`checked_int8`, rebuilds the graph from the record).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from postergenre.backends import INPUT, OUTPUT, make_session
from postergenre.data.dataset import load_split
from postergenre.data.images import load_poster_batch
from postergenre.defaults import INT8_MAX_AP_DROP, INT8_SPLITS
from postergenre.errors import DatasetError
from postergenre.evaluate.metrics import MIN_POSITIVES, macro_ap
from postergenre.export import (
    cached_onnx,
    calibration_posters,
    quantize_onnx,
    run_fingerprint,
    sample_agreement,
)
from postergenre.io import atomic_write_bytes, atomic_write_json
from postergenre.paths import cache_dir
from postergenre.run import INT8_CARD, Run


def quantize_run(run: Run, dataset: str | os.PathLike, max_drop: float = INT8_MAX_AP_DROP,
                 batch_size: int = 16, split: str = INT8_SPLITS[0],
                 on_batch: Callable[[int], None] | None = None) -> dict:
    """Quantise the run's graph to int8 and keep it only if quality holds on held-out posters.

    Calibrates on the posters bundled with the package, then scores every poster of `split`
    (val; test for a run that trained on val) with both graphs. When the int8 macro AP (genres
    with >= 10 positives) is within `max_drop` of fp32, writes RUN/int8.json (the check's
    figures) and the graph into the cache, and the onnx backend uses int8 from then on, until
    the run changes. Returns the figures.
    """

    if split not in INT8_SPLITS:
        raise DatasetError(f"{split!r}: the int8 check runs on {' or '.join(INT8_SPLITS)}")
    held_out = load_split(dataset, split)
    if held_out.genres != run.genres:
        raise DatasetError(f"{dataset}: its genres differ from the run's; use the run's dataset")
    columns = np.flatnonzero(held_out.labels.sum(0) >= MIN_POSITIVES)
    if not len(columns):
        raise DatasetError(f"{dataset}: no genre has {MIN_POSITIVES} positives in {split}; "
                           "too small to check the int8 quality")
    fp32_path = cached_onnx(run)
    calibration = calibration_posters(run.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = quantize_onnx(fp32_path, Path(tmp) / "int8.onnx", calibration)
        fp32, int8 = make_session(fp32_path), make_session(int8_path)
        scores: dict[str, list[np.ndarray]] = {"fp32": [], "int8": []}
        for start in range(0, len(held_out), batch_size):
            x = load_poster_batch(held_out.paths[start : start + batch_size], run.input_size)
            scores["fp32"].append(fp32.run([OUTPUT], {INPUT: x})[0])
            scores["int8"].append(int8.run([OUTPUT], {INPUT: x})[0])
            if on_batch:
                on_batch(len(x))
        ap = {k: macro_ap(held_out.labels, np.concatenate(v), columns)
              for k, v in scores.items()}
        record = {
            "run": run_fingerprint(run), "split": split, "posters": len(held_out),
            "calibration_posters": len(calibration),
            "sample_max_diff": sample_agreement(fp32_path, int8_path, calibration),
            "macro_ap_fp32": round(ap["fp32"], 5),
            "macro_ap_int8": round(ap["int8"], 5), "max_drop": max_drop,
            "accepted": bool(ap["fp32"] - ap["int8"] <= max_drop),
        }
        cached = cache_dir() / "onnx" / f"{run.model_name}-{record['run']}-int8.onnx"
        if record["accepted"]:
            atomic_write_bytes(cached, int8_path.read_bytes())
            atomic_write_json(run.path / INT8_CARD, record)
        record["graph"] = str(cached) if record["accepted"] else None
    return record


