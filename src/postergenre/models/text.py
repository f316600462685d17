"""`TitleModel`: genres from a movie's title and year, one multi-label linear layer (logistic).

Features (no vocabulary to store: every n-gram is hashed):

- word n-grams and character n-grams (within word boundaries) of the folded title
  (`data.titles.fold_title`: mojibake repaired, accents stripped, lower case), the year removed;
  each block TF-IDF weighted (sublinear tf, idf from the training titles) and L2-normalised
- the year from "Title (YYYY)" (`year`): "none"; "decade" (one-hot, with a bucket for
  before 1920 and one for no year); "decade+5y" (also 5-year bins), each scaled by
  `year_weight`

`fit(titles, y)` / `decision_function(titles)` -> (n, G) logits / `predict_proba(titles)`, as in
scikit-learn. `save(settings_path, weights_path)` writes its settings and genres (JSON) and
its float16 coefficients, float32 intercepts and idf (safetensors); no pickles. The file names
inside a run are run.py's (RUN/text/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from postergenre.data.titles import fold_title, parse_title
from postergenre.errors import RunError
from postergenre.io import atomic_write_json, save_weights

if TYPE_CHECKING:  # scipy is imported where features are built: loading a model needs none
    import scipy.sparse as sp

YEAR_ENCODINGS = ("none", "decade", "decade+5y")
FIRST_DECADE, LAST_DECADE = 1920, 2020  # decades outside fall in the end buckets


def _year_block(years: Sequence[int | None], encoding: str) -> sp.csr_matrix:
    """One-hot year columns: decades 1920..2020 (+ before, + missing); 5-year bins too."""
    import scipy.sparse as sp

    decades = list(range(FIRST_DECADE, LAST_DECADE + 1, 10))
    n_dec = len(decades) + 2  # before the first decade, then missing
    n_five = 2 * len(decades) if encoding == "decade+5y" else 0
    rows, cols = [], []
    for i, year in enumerate(years):
        if year is None:
            rows.append(i)
            cols.append(n_dec - 1)
            continue
        d = (min(year, LAST_DECADE + 9) - FIRST_DECADE) // 10
        rows.append(i)
        cols.append(len(decades) if d < 0 else d)
        if n_five and d >= 0:
            rows.append(i)
            cols.append(n_dec + min((min(year, LAST_DECADE + 9) - FIRST_DECADE) // 5, n_five - 1))
    data = np.ones(len(rows), np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(years), n_dec + n_five))


def _normalise_blocks(x: sp.csr_matrix, width: int) -> None:
    """Scale, in place, each row's columns [0, width) and [width, ...) to unit L2 norm (what
    scikit-learn's `normalize` does to each block, without slicing or validation)."""
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    first = x.indices < width
    squares = x.data.astype(np.float64) ** 2
    norms = [np.sqrt(np.bincount(rows[m], squares[m], minlength=x.shape[0]))
             for m in (first, ~first)]
    norm = np.where(first, norms[0][rows], norms[1][rows])
    x.data /= np.where(norm > 0, norm, 1.0).astype(x.data.dtype)


class TitleModel:
    """Title + year -> per-genre logits."""

    def __init__(self, genres: Sequence[str], word_ngrams: tuple[int, int] = (1, 2),
                 char_ngrams: tuple[int, int] = (2, 5), n_features: int = 2**14,
                 year: str = "decade", year_weight: float = 1.0, C: float = 4.0,
                 fold: bool = True) -> None:
        if year not in YEAR_ENCODINGS:
            raise ValueError(f"year must be one of {', '.join(YEAR_ENCODINGS)}, not {year!r}")
        self.genres = list(genres)
        self.word_ngrams = tuple(word_ngrams)
        self.char_ngrams = tuple(char_ngrams)
        self.n_features = int(n_features)
        self.year = year
        self.year_weight = float(year_weight)
        self.C = float(C)
        self.fold = bool(fold)
        self.idf: np.ndarray | None = None  # (2 * n_features,) word block, then char block
        self.coef: np.ndarray | None = None  # (G, n_columns)
        self.intercept: np.ndarray | None = None  # (G,)
        self._coef_t: np.ndarray | None = None  # decision_function's transposed copy of coef

    # --- features -------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {"genres": self.genres, "word_ngrams": list(self.word_ngrams),
                "char_ngrams": list(self.char_ngrams), "n_features": self.n_features,
                "year": self.year, "year_weight": self.year_weight, "C": self.C,
                "fold": self.fold}

    def _hashed(self, titles: Sequence[str]) -> tuple[sp.csr_matrix, list[int | None]]:
        import scipy.sparse as sp
        from sklearn.feature_extraction.text import HashingVectorizer

        names, years = [], []
        for t in titles:
            name, year = parse_title(t or "")
            names.append(fold_title(name) if self.fold else name.lower())
            years.append(year)
        if getattr(self, "_vectorizers", None) is None:  # stateless: built once per model
            common = {"n_features": self.n_features, "alternate_sign": False, "norm": None,
                      "lowercase": False, "dtype": np.float32}
            self._vectorizers = (
                HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams,
                                  token_pattern=r"(?u)\b\w+\b", **common),
                HashingVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common))
        x = sp.hstack([v.transform(names) for v in self._vectorizers], format="csr")
        x.data = 1.0 + np.log(x.data)  # sublinear tf
        return x, years

    def _features(self, titles: Sequence[str]) -> sp.csr_matrix:
        import scipy.sparse as sp

        if self.idf is None:
            raise RuntimeError("TitleModel is not fitted")
        x, years = self._hashed(titles)
        x.data *= self.idf[x.indices]
        _normalise_blocks(x, self.n_features)  # each block (words, characters) to unit L2
        if self.year == "none":
            return x
        year = _year_block(years, self.year) * self.year_weight
        return sp.hstack([x, year], format="csr", dtype=np.float32)

    # --- fit / score ----------------------------------------------------------------------

    def fit(self, titles: Sequence[str], y: np.ndarray) -> TitleModel:
        """Fit on titles and their (n, G) 0/1 labels: one multi-label linear layer, mean BCE +
        L2 (the objective of scikit-learn's per-genre `LogisticRegression(C)`, scaled by 1/n),
        L-BFGS; a genre with no positive keeps a zero row and its clipped frequency."""
        y = np.asarray(y, np.float32) > 0.5
        if y.shape != (len(titles), len(self.genres)):
            raise ValueError(f"labels {y.shape} for {len(titles)} titles and "
                             f"{len(self.genres)} genres")
        x, _ = self._hashed(titles)
        df = np.bincount(x.indices, minlength=2 * self.n_features)
        self.idf = (np.log((1 + len(titles)) / (1 + df)) + 1).astype(np.float32)
        feats = self._features(titles)
        freq = np.clip(y.mean(axis=0), 1e-4, 1 - 1e-4)
        learn = (y.sum(axis=0) > 0) & (y.sum(axis=0) < len(y))
        w, b = _fit_logistic(feats, y[:, learn].astype(np.float32), 1.0 / (self.C * len(y)),
                             np.log(freq / (1 - freq))[learn])
        self.coef = np.zeros((len(self.genres), feats.shape[1]), np.float32)
        self.intercept = np.log(freq / (1 - freq)).astype(np.float32)
        self.coef[learn], self.intercept[learn] = w.T, b
        self._coef_t = None  # decision_function's transposed copy, rebuilt on first use
        return self

    def decision_function(self, titles: Sequence[str]) -> np.ndarray:
        """(n, G) float32 logits."""
        if self.coef is None or self.intercept is None:
            raise RuntimeError("TitleModel is not fitted")
        if len(titles) == 0:
            return np.zeros((0, len(self.genres)), np.float32)
        if self._coef_t is None or self._coef_t.shape[1] != len(self.genres):
            self._coef_t = np.ascontiguousarray(self.coef.T)  # (features, G): no copy per call
        feats = self._features(list(titles))
        return np.asarray(feats @ self._coef_t, np.float32) + self.intercept

    def predict_proba(self, titles: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision_function(titles)))

    def contributions(self, title: str) -> tuple[list[str], np.ndarray]:
        """The title's words (and its decade) with their (n_words, G) contributions to each
        genre's logit: the linear model's weight times the feature value, summed over the
        features a word makes (its unigram, its character n-grams, half of each word bigram
        it is in). Together with the intercept they add up to `decision_function(title)`."""
        if self.coef is None:
            raise RuntimeError("TitleModel is not fitted")
        feats = self._features([title]).tocsr()
        name, year = parse_title(title or "")
        words = re.findall(r"(?u)\b\w+\b", fold_title(name) if self.fold else name.lower())
        owners: dict[int, list[tuple[int, float]]] = {}  # feature column -> (word, share)
        for i, w in enumerate(words):
            for col in self._hashed([w])[0].indices:
                owners.setdefault(int(col), []).append((i, 1.0))
        for i in range(len(words) - 1):
            for col in self._hashed([f"{words[i]} {words[i + 1]}"])[0].indices:
                owners.setdefault(int(col), [])
                if not any(j in (i, i + 1) for j, _ in owners[int(col)]):
                    owners[int(col)] += [(i, 0.5), (i + 1, 0.5)]
        tokens = words + ([f"({year // 10 * 10}s)" if year else "(no year)"]
                          if self.year != "none" else [])
        out = np.zeros((len(tokens), len(self.genres)), np.float32)
        for col, value in zip(feats.indices, feats.data, strict=True):
            part = value * self.coef[:, col]
            if col >= 2 * self.n_features:  # the year block
                out[-1] += part
                continue
            shares = owners.get(int(col)) or []
            total = sum(s for _, s in shares)
            for i, share in shares:
                out[i] += part * share / total
        return tokens, out

    # --- files ----------------------------------------------------------------------------

    def save(self, settings_path: str | Path, weights_path: str | Path) -> None:
        """Write the settings (JSON) and the weights (safetensors), each atomically."""
        import torch

        if self.coef is None or self.intercept is None or self.idf is None:
            raise RuntimeError("TitleModel is not fitted")
        save_weights({"coef": torch.from_numpy(self.coef).half(),
                      "intercept": torch.from_numpy(self.intercept),
                      "idf": torch.from_numpy(self.idf)}, Path(weights_path))
        atomic_write_json(settings_path, self.settings())

    @classmethod
    def load(cls, settings_path: str | Path, weights_path: str | Path) -> TitleModel:
        from safetensors.numpy import load_file

        folder = Path(settings_path).parent
        try:
            settings = json.loads(Path(settings_path).read_text(encoding="utf-8"))
            tensors = load_file(str(weights_path))
            model = cls(**settings)
            model.coef = tensors["coef"].astype(np.float32)
            model.intercept = tensors["intercept"].astype(np.float32)
            model.idf = tensors["idf"].astype(np.float32)
        except FileNotFoundError as e:
            raise RunError(f"{folder}: text model file missing ({Path(e.filename).name})") from None
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise RunError(f"{folder}: unreadable text model ({e})") from None
        width = model.coef.shape[1]
        if model.coef.shape[0] != len(model.genres) or model.idf.shape != (2 * model.n_features,) \
                or width < 2 * model.n_features:
            raise RunError(f"{folder}: text model weights do not match its settings")
        return model


def _fit_logistic(x: sp.csr_matrix, y: np.ndarray, l2: float, b0: np.ndarray,
                  max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean BCE over rows, summed over genres, + l2 / 2 * ||W||^2 (intercepts
    unpenalised) with torch's L-BFGS on gradients computed by scipy's sparse products:
    (F, G) weights and (G,) intercepts."""
    import torch

    n, f = x.shape
    g = y.shape[1]
    xt = x.T.tocsr()
    theta = torch.zeros(f * g + g, dtype=torch.float32)
    theta[f * g :] = torch.from_numpy(np.asarray(b0, np.float32))
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=max_iter, history_size=10,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        t = theta.detach().numpy()
        w, b = t[: f * g].reshape(f, g), t[f * g :]
        z = np.asarray(x @ w, np.float32) + b
        p = 0.5 * (1 + np.tanh(0.5 * z))  # a sigmoid that never overflows
        r = (p - y) / n
        value = float((np.logaddexp(0, z) - y * z).sum() / n + 0.5 * l2 * np.dot(t[: f * g],
                                                                                t[: f * g]))
        grad = np.concatenate([(np.asarray(xt @ r) + l2 * w).ravel(), r.sum(axis=0)])
        theta.grad = torch.from_numpy(grad.astype(np.float32))
        return torch.tensor(value)

    opt.step(closure)
    t = theta.detach().numpy()
    return t[: f * g].reshape(f, g).copy(), t[f * g :].copy()


# --- fusion -------------------------------------------------------------------------------

FUSION_FORMS = ("global", "per-genre", "stack")


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


class Fusion:
    """Late fusion of poster and title logits, per genre g:

        fused_g = a_g * poster_g + w_g * (text_g - prior_g) + c_g

    ("global" and "per-genre": a = 1, c = 0, one w or one per genre; "stack": all three
    fitted). `prior_g` is the logit of the train frequency, what the text model says of a
    title it knows nothing about, so a weight of 0 is the poster model unchanged.
    """

    def __init__(self, genres: Sequence[str], form: str, poster_weight: np.ndarray,
                 text_weight: np.ndarray, bias: np.ndarray, prior: np.ndarray) -> None:
        if form not in FUSION_FORMS:
            raise ValueError(f"fusion form must be one of {', '.join(FUSION_FORMS)}, not {form!r}")
        self.genres, self.form = list(genres), form
        self.poster_weight = np.asarray(poster_weight, np.float64)
        self.text_weight = np.asarray(text_weight, np.float64)
        self.bias = np.asarray(bias, np.float64)
        self.prior = np.asarray(prior, np.float64)

    def logits(self, poster_probs: np.ndarray, text_logits: np.ndarray) -> np.ndarray:
        return (self.poster_weight * logit(poster_probs)
                + self.text_weight * (np.asarray(text_logits, np.float64) - self.prior)
                + self.bias)

    def __call__(self, poster_probs: np.ndarray, text_logits: np.ndarray) -> np.ndarray:
        """(n, G) fused probabilities (float32)."""
        z = self.logits(poster_probs, text_logits)
        return (0.5 * (1 + np.tanh(0.5 * z))).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"form": self.form, "genres": self.genres,
                **{k: [float(v) for v in getattr(self, k)]
                   for k in ("poster_weight", "text_weight", "bias", "prior")}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Fusion:
        return cls(obj["genres"], obj["form"], obj["poster_weight"], obj["text_weight"],
                   obj["bias"], obj["prior"])

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Fusion:
        path = Path(path)
        try:
            fusion = cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RunError(f"{path}: fusion weights are missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{path}: unreadable fusion weights ({e})") from None
        n = len(fusion.genres)
        if any(len(v) != n for v in (fusion.poster_weight, fusion.text_weight, fusion.bias,
                                     fusion.prior)):
            raise RunError(f"{path}: fusion weights do not match its {n} genres")
        return fusion
