"""The original Keras custom CNN as a peer: trained on the same posters, timed, scored on test.

    /path/to/tf-venv/bin/python benchmarks/bench_keras.py --data datasets/shared \
        [--train 1400 --val 295] [--epochs 2] [--test N] [--out keras.json]

Needs TensorFlow (never a project dependency: install `tensorflow-cpu numpy pandas pillow
scikit-learn` into a separate virtual environment and run this script with its Python); when
TensorFlow is not importable it says so and exits 0, so a benchmark run skips the Keras row.
The script imports nothing from postergenre (that environment has no torch): it reads the
prepared dataset's CSVs itself.

What it runs is the original notebook `4. Train-1.ipynb`, rebuilt from its description:
posters read with Keras's `load_img(target_size=(200, 150))` (nearest-neighbour resize) and
scaled to [0, 1]; 4 x [Conv 5x5 'valid' (16, 32, 64, 64) + ReLU -> MaxPool 2 -> Dropout 0.25],
Flatten -> Dense 128 + ReLU -> Dropout 0.5 -> Dense 64 + ReLU -> Dropout 0.5 -> Dense G
sigmoid; Adam (Keras defaults, lr 1e-3), binary cross-entropy, metric accuracy, batch 64,
`fit(..., validation_data=(X_val, Y_val))` so val is scored every epoch. No augmentation.

Subsets (`--train/--val/--test N`) are the same seeded samples as `bench_train.py`'s
(`DataFrame.sample(N, random_state=0)`), so both scripts see the same posters. It prints
seconds per epoch (training plus the val pass, as Keras reports it) and train posters per
second, then the test scores (macro averages over genres with at least 10 test positives,
scikit-learn definitions as in `bench_train.py`) beside the prior (train genre frequencies).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

MIN_POSITIVES = 10
SIZE = (200, 150)


def read_split(data: Path, name: str, n: int | None, genres: list[str]) -> pd.DataFrame:
    table = pd.read_csv(data / f"{name}.csv", dtype=str, keep_default_na=False)
    missing = [c for c in ["poster", *genres] if c not in table.columns]
    if missing:
        raise SystemExit(f"error: {data / (name + '.csv')}: missing columns {missing[:3]}")
    if n is not None and n < len(table):
        table = table.sample(n, random_state=0)
    return table


def arrays(table: pd.DataFrame, genres: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The posters as uint8 (N, 200, 150, 3) (the notebook's `img_to_array(load_img(...))`,
    whose values are whole numbers) and the labels; `/ 255` is applied per batch."""
    from keras.utils import img_to_array, load_img

    x = np.empty((len(table), *SIZE, 3), np.uint8)
    for i, path in enumerate(table["poster"]):
        x[i] = img_to_array(load_img(path, target_size=SIZE))
    return x, table[genres].to_numpy(np.float32)


def scaled(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255  # the notebook's float32 [0, 1] arrays


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool):
    """What `fit(x, y, batch_size, shuffle=True)` feeds, scaled a batch at a time: a float32
    copy of all 11,192 train posters is 4 GB, and Keras copies its input arrays again."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.order = np.random.permutation(len(x)) if shuffle else np.arange(len(x))

        def __len__(self) -> int:
            return -(-len(x) // batch_size)

        def __getitem__(self, i: int):
            rows = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            return scaled(x[rows]), y[rows]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.order = np.random.permutation(len(x))

    return Batches()


def build(num_genres: int):
    from keras import Input, Sequential, layers

    model = Sequential([Input((*SIZE, 3))])
    for filters in (16, 32, 64, 64):
        model.add(layers.Conv2D(filters, (5, 5), activation="relu"))
        model.add(layers.MaxPooling2D((2, 2)))
        model.add(layers.Dropout(0.25))
    model.add(layers.Flatten())
    model.add(layers.Dense(128, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dropout(0.5))
    model.add(layers.Dense(num_genres, activation="sigmoid"))
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    return model


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    keep = np.flatnonzero(y.sum(axis=0) >= MIN_POSITIVES)
    top3 = np.argsort(-p, axis=1, kind="stable")[:, :3]
    return {
        "top3_hit": float(np.mean(np.take_along_axis(y, top3, axis=1).any(axis=1))),
        "macro_ap": float(np.mean([average_precision_score(y[:, g], p[:, g]) for g in keep])),
        "micro_ap": float(average_precision_score(y.ravel(), p.ravel())),
        "macro_auc": float(np.mean([roc_auc_score(y[:, g], p[:, g]) for g in keep])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="datasets/shared")
    ap.add_argument("--train", type=int, default=None, help="train posters (default all)")
    ap.add_argument("--val", type=int, default=None, help="val posters (default all)")
    ap.add_argument("--test", type=int, default=None, help="test posters (default all; 0 none)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        print(f"TensorFlow is not importable ({e}): the Keras original is skipped")
        return 0

    data = Path(args.data)
    genres_file = data / "genres.json"
    if not genres_file.is_file():
        print(f"error: {data}: not a dataset folder (no genres.json)", file=sys.stderr)
        return 1
    genres = list(json.loads(genres_file.read_text(encoding="utf-8"))["genres"])
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    train = read_split(data, "train", args.train, genres)
    val = read_split(data, "val", args.val, genres)
    x_train, y_train = arrays(train, genres)
    x_val, y_val = arrays(val, genres)
    decode_s = time.perf_counter() - t0
    print(f"decoded {len(x_train)} train + {len(x_val)} val posters in {decode_s:.0f} s")

    model = build(len(genres))
    n_train, epoch_s = len(x_train), []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.t)
            print(f"epoch {epoch + 1}: {epoch_s[-1]:.1f} s, "
                  f"{n_train / epoch_s[-1]:.0f} train posters/s, "
                  f"val loss {logs.get('val_loss', float('nan')):.4f}", flush=True)

    t0 = time.perf_counter()
    history = model.fit(batches(x_train, y_train, args.batch_size, True), epochs=args.epochs,
                        validation_data=batches(x_val, y_val, args.batch_size, False),
                        callbacks=[Timer()], verbose=0)
    train_s = time.perf_counter() - t0
    steady = epoch_s[1:] or epoch_s  # the first epoch also builds the graph
    per_epoch = float(np.median(steady))
    result = {
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "train_posters": n_train, "val_posters": len(x_val), "epochs": args.epochs,
        "batch_size": args.batch_size, "decode_s": decode_s, "train_s": train_s,
        "epoch_s": epoch_s, "seconds_per_epoch": per_epoch,
        "posters_per_s": n_train / per_epoch,
        "val_loss": [float(v) for v in history.history.get("val_loss", [])],
    }
    print(f"Keras original custom CNN (TensorFlow {tf.__version__}): {per_epoch:.1f} s per "
          f"epoch (median after the first; first {epoch_s[0]:.1f} s), "
          f"{result['posters_per_s']:.0f} train posters/s, {train_s:.0f} s for "
          f"{args.epochs} epochs")
    del x_train, x_val

    if args.test != 0:
        test = read_split(data, "test", args.test, genres)
        x_test, y_test = arrays(test, genres)
        p = model.predict(scaled(x_test), batch_size=args.batch_size, verbose=0)
        prior = np.tile(y_train.mean(axis=0), (len(y_test), 1))
        result["test_posters"] = len(y_test)
        result["test"], result["prior"] = scores(y_test, p), scores(y_test, prior)
        print(f"test ({len(y_test)} posters)     top-3 hit  macro AP  micro AP  ROC-AUC")
        for name in ("test", "prior"):
            r = result[name]
            label = "Keras original" if name == "test" else "prior (train freq.)"
            print(f"{label:22}{r['top3_hit']:10.3f}{r['macro_ap']:10.3f}{r['micro_ap']:10.3f}"
                  f"{r['macro_auc']:9.3f}")
    if args.out:
        tmp = Path(args.out).with_name(f".{Path(args.out).name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.out)  # atomic: a reader never sees half a file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
