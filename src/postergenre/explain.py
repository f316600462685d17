"""Why a genre: Grad-CAM heat maps over the poster, for every registered model, in PyTorch.

    explainer = Explainer.load()                      # the shipped model; or Explainer.load(run)
    e = explainer.explain("poster.jpg")               # its top-3 genres (or genres=["Horror"])
    e.heatmaps                                        # (k, H, W) float32 in [0, 1], H x W the
                                                      # model's input size
    e.overlay_png(0), e.summary_png()                 # PNG bytes

Grad-CAM (Selvaraju et al. 2017) on the model's last convolutional stage (each model's
`explain_layer()`): the stage's output map weighted channel by channel by the mean gradient of
the genre's logit, summed, ReLU, upsampled bilinearly to the poster and scaled to [0, 1]. One
forward pass serves every explained genre (one cheap backward pass each, through the layers
after the map only). The explainer always runs the run's PyTorch model, whatever backend
`predict` uses, so its probabilities are the fp32 model's. Captum's `LayerGradCam` computes the
same maps (tests/test_explain.py checks it) but runs a forward pass per genre, 3x the latency
of one explanation; the measured faithfulness of the maps is in docs/benchmarks.md.

Title words: when a run has a title model and a title is given, `Explanation.title_words`
lists for each explained genre the title's words with their contribution to its fused logit
(`title_contributions`: the linear model's per-feature contributions, grouped by word).
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from postergenre.data.images import PosterSource, load_poster_array, to_tensor
from postergenre.errors import PosterGenreError
from postergenre.io import atomic_write_bytes
from postergenre.models.registry import PosterModel
from postergenre.run import Run, load_run

TOP_K = 3
COLORMAP = "turbo"
OVERLAY_ALPHA = 0.6  # the overlay's opacity at the hottest pixel


def explain_layer(model: nn.Module) -> nn.Module:
    """The module whose output map is explained (every registered model has one)."""
    if not hasattr(model, "explain_layer"):
        raise PosterGenreError(f"{type(model).__name__}: model has no explain_layer(); "
                               "heat maps need its last convolutional stage")
    return cast(PosterModel, model).explain_layer()


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, targets: torch.Tensor | int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of `targets` (N, k) genre indices (or an int k: each poster's top k) for
    images `x` (N, 3, H, W) in [0, 1].

    Returns (probabilities (N, G), the targets (N, k), heat maps (N, k, H, W) in [0, 1]).
    The model must be in eval mode with its parameters frozen (`requires_grad_(False)`): only
    the layers after the map are differentiated. A model that runs `layer` twice with
    `flip_average` (the second time on the mirror image) gets the two maps' sum, the second
    flipped back.
    """
    maps: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output = output.detach().requires_grad_(True)
        maps.append(output)
        return output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits: torch.Tensor = model(x)
    finally:
        handle.remove()
    if not maps:
        raise PosterGenreError(f"{type(model).__name__}: its explain layer did not run")
    if isinstance(targets, int):
        targets = logits.detach().topk(targets, dim=1).indices
    flipped = [False, *([bool(getattr(model, "flip_average", False))] * (len(maps) - 1))]
    cams = []
    for j in range(targets.shape[1]):
        score = logits.gather(1, targets[:, j : j + 1]).sum()  # posters are independent
        grads = torch.autograd.grad(score, maps, retain_graph=j < targets.shape[1] - 1)
        cam = torch.zeros(())
        for g, a, flip in zip(grads, maps, flipped, strict=True):
            part = (g.mean((2, 3), keepdim=True) * a).sum(1)  # channels weighted by gradient
            cam = cam + (part.flip(2) if flip else part)
        cams.append(F.relu(cam))
    cam = torch.stack(cams, 1)  # (N, k, h, w)
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(2).amax(2)[:, :, None, None]
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return torch.sigmoid(logits.detach()), targets, cam.clamp_(0, 1).detach()


@dataclass
class Explanation:
    """One poster's heat maps: `heatmaps[i]` explains `genres[i]`."""

    source: str
    image: np.ndarray  # (H, W, 3) uint8: the poster as the model saw it
    probabilities: np.ndarray  # (n_genres,): every genre's probability (PyTorch fp32)
    vocabulary: list[str]  # the model's genres, in `probabilities` order
    genres: list[str]  # the explained genres
    heatmaps: np.ndarray  # (k, H, W) float32 in [0, 1]
    title_words: dict[str, list[tuple[str, float]]] | None = field(default=None)

    def probability(self, genre: str) -> float:
        return float(self.probabilities[self.vocabulary.index(genre)])

    def overlay(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8: the poster with heat map i blended over it."""
        return overlay(self.image, self.heatmaps[i])

    def overlay_png(self, i: int) -> bytes:
        return png(self.overlay(i))

    def heat_png(self, i: int) -> bytes:
        """Heat map i alone as an RGBA PNG (transparent where cold), to lay over the poster."""
        return png(heat_rgba(self.heatmaps[i]))

    def summary_png(self) -> bytes:
        return summary_png(self)


def colorize(heat: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) float RGB in [0, 1] through the colormap."""
    from matplotlib import colormaps

    return colormaps[COLORMAP](heat)[..., :3]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The poster with the heat map over it, opaque in proportion to the heat."""
    a = alpha * heat[..., None]
    out = (1 - a) * (image / 255.0) + a * colorize(heat)
    return (255 * out).round().astype(np.uint8)


def heat_rgba(heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    rgba = np.concatenate([colorize(heat), alpha * heat[..., None]], axis=2)
    return (255 * rgba).round().astype(np.uint8)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=3)  # 3x faster than 6, +25% bytes
    return buf.getvalue()


def summary_png(e: Explanation) -> bytes:
    """The poster and each explained genre's overlay side by side, probabilities above."""
    from matplotlib.figure import Figure

    panels = [(e.image, "poster")] + [
        (e.overlay(i), f"{g} ({e.probability(g):.2f})") for i, g in enumerate(e.genres)]
    h, w = e.image.shape[:2]
    width = 2.2 * len(panels)
    fig = Figure(figsize=(width, 2.2 * h / w + 0.5), dpi=100)
    for i, (picture, caption) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(picture)
        ax.set_title(caption, fontsize=10)
        ax.axis("off")
    fig.suptitle(Path(e.source).name if e.source else "", fontsize=9, color="#555")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def title_contributions(run: Run, title: str | None, genres: Sequence[str]
                        ) -> dict[str, list[tuple[str, float]]] | None:
    """The hook for runs with a title model: for each genre, the title's words with their
    contribution to the genre's logit (the linear model's weight times the word's feature
    value, times the fusion's weight of the title: how far the word moved the fused logit;
    positive pushes the genre up), largest magnitude first. None for a run without a title
    model or without a title."""
    side = run.title_side  # read once per run
    if not title or not title.strip() or side is None:
        return None
    fusion = side.fusion
    tokens, parts = side.model.contributions(title)
    out = {}
    for g in genres:
        j = run.genres.index(g)
        pairs = [(t, float(parts[i, j] * fusion.text_weight[j])) for i, t in enumerate(tokens)]
        out[g] = sorted(pairs, key=lambda p: -abs(p[1]))
    return out


class Explainer:
    """A run's PyTorch model ready for Grad-CAM (safe to share between threads)."""

    def __init__(self, run: Run, device: str = "cpu") -> None:
        self.run = run
        self.genres: list[str] = run.genres
        self.input_size: tuple[int, int] = run.input_size
        self.device = torch.device(device)
        self.model = run.build_model(self.device).requires_grad_(False)
        self.layer = explain_layer(self.model)
        self._lock = threading.Lock()  # the hook is the model's: one explanation at a time

    @classmethod
    def load(cls, run: str | Path | None = None, **kwargs) -> Explainer:
        """Load a run directory; None loads the model shipped with the package."""
        return cls(load_run(run), **kwargs)

    def genre_index(self, genre: str) -> int:
        if genre not in self.genres:
            raise PosterGenreError(f"{genre!r}: not a genre of this model (one of "
                                   f"{', '.join(self.genres)})")
        return self.genres.index(genre)

    def explain_batch(self, images: np.ndarray, targets: np.ndarray | int = TOP_K
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 posters at the input size and (N, k) genre indices (or k: each
        poster's top k) -> (probabilities (N, G), targets (N, k), heat maps (N, k, H, W))."""
        x = to_tensor(images).to(self.device)
        t = targets if isinstance(targets, int) else torch.as_tensor(
            np.asarray(targets), dtype=torch.long, device=self.device)
        with self._lock:
            probs, t, maps = grad_cam(self.model, self.layer, x, t)
        return probs.float().cpu().numpy(), t.cpu().numpy(), maps.float().cpu().numpy()

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, G) probabilities of the same PyTorch model."""
        x = to_tensor(images).to(self.device)
        return torch.sigmoid(self.model(x)).float().cpu().numpy()

    def explain_array(self, image: np.ndarray, genres: Sequence[str] | None = None,
                      k: int = TOP_K, source: str = "", title: str | None = None
                      ) -> Explanation:
        """Heat maps of `genres` (default: the poster's top k) for one (H, W, 3) uint8 poster."""
        targets = np.array([[self.genre_index(g) for g in genres]]) if genres else k
        probs, named, maps = self.explain_batch(image[None], targets)
        chosen = [self.genres[j] for j in named[0]]
        return Explanation(source, image, probs[0], self.genres, chosen, maps[0],
                           title_contributions(self.run, title, chosen))

    def explain(self, source: PosterSource, genres: Sequence[str] | None = None,
                k: int = TOP_K, name: str | None = None, title: str | None = None
                ) -> Explanation:
        """Heat maps for a poster file or bytes (InvalidImageError for a bad one)."""
        image = load_poster_array(source, self.input_size)
        label = name or ("upload" if isinstance(source, bytes | bytearray) else str(source))
        return self.explain_array(image, genres, k, label, title)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "genre"


def write_explanation(e: Explanation, out_dir: str | Path, stem: str) -> list[Path]:
    """`STEM_GENRE.png` (overlay) and `STEM_GENRE.npy` (the (H, W) float32 map) for each genre,
    and `STEM_summary.png`; every file written atomically. Returns the paths written."""
    out_dir, written = Path(out_dir), []
    for i, genre in enumerate(e.genres):
        base = f"{stem}_{safe_name(genre)}"
        buf = io.BytesIO()
        np.save(buf, e.heatmaps[i].astype(np.float32))
        for path, data in ((out_dir / f"{base}.png", e.overlay_png(i)),
                           (out_dir / f"{base}.npy", buf.getvalue())):
            atomic_write_bytes(path, data)
            written.append(path)
    path = out_dir / f"{stem}_summary.png"
    atomic_write_bytes(path, e.summary_png())
    return [*written, path]


# -- the evaluate report's gallery ------------------------------------------------------------

GALLERY_THUMB = (201, 136)  # (height, width), as the report's other poster cards
GALLERY_KINDS = ("hits", "false alarms")


@dataclass
class GalleryCard:
    index: int  # the poster's row in the split
    probability: float
    image: str  # the poster with the genre's heat map, a JPEG data URI


def gallery(explainer: Explainer, y_true: np.ndarray, scores: np.ndarray,
            paths: Sequence[str | Path], genres: Sequence[str], n: int = 4,
            batch_size: int = 8) -> dict[str, dict[str, list[GalleryCard]]]:
    """For each genre, its `n` most confident true positives ("hits") and false positives
    ("false alarms") of a split, each with that genre's heat map. `scores` are the evaluated
    probabilities (any backend), in the explainer's genre order; unreadable posters are left
    out."""
    import base64

    from PIL import Image

    wanted: list[tuple[str, str, int]] = []  # (genre, kind, poster)
    for g in genres:
        j = explainer.genre_index(g)
        for kind, truth in zip(GALLERY_KINDS, (1, 0), strict=True):
            rows = np.flatnonzero(y_true[:, j] == truth)
            wanted += [(g, kind, int(i)) for i in rows[np.argsort(-scores[rows, j])][:n]]
    out: dict[str, dict[str, list[GalleryCard]]] = {g: {k: [] for k in GALLERY_KINDS}
                                                    for g in genres}
    for start in range(0, len(wanted), batch_size):
        chunk, images = [], []
        for g, kind, i in wanted[start : start + batch_size]:
            try:
                images.append(load_poster_array(paths[i], explainer.input_size))
            except PosterGenreError:
                continue
            chunk.append((g, kind, i))
        if not chunk:
            continue
        targets = np.array([[explainer.genre_index(g)] for g, _, _ in chunk])
        _, _, maps = explainer.explain_batch(np.stack(images), targets)
        for (g, kind, i), image, heat in zip(chunk, images, maps[:, 0], strict=True):
            thumb = Image.fromarray(overlay(image, heat)).resize(GALLERY_THUMB[::-1],
                                                                  Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=80)
            uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            out[g][kind].append(GalleryCard(i, float(scores[i, explainer.genre_index(g)]), uri))
    return out
