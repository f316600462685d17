"""Heat maps: their shape, where they point on a model built to look at one region, the CLI,
POST /explain (errors exactly as /predict's), the report's gallery and the shipped model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import RUN_GENRES as GENRES
from conftest import RUN_INPUT_SIZE as INPUT_SIZE
from conftest import bomb_png, make_poster, make_run, run_cli, striped_poster
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from postergenre.data.images import load_poster_array
from postergenre.errors import PosterGenreError
from postergenre.explain import Explainer, grad_cam, write_explanation
from postergenre.predict import Predictor
from postergenre.run import load_run
from postergenre.serve import Limits, create_app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def explainer(run_dir) -> Explainer:
    torch.set_num_threads(1)
    return Explainer(load_run(run_dir))


def test_heatmaps_have_the_posters_shape_and_vary(explainer, tmp_path):
    e = explainer.explain(striped_poster(tmp_path / "p.jpg"))
    assert e.heatmaps.shape == (3, *INPUT_SIZE)
    assert e.image.shape == (*INPUT_SIZE, 3)
    assert e.heatmaps.dtype == np.float32
    assert e.heatmaps.min() >= 0 and e.heatmaps.max() <= 1
    assert all(m.std() > 0.01 for m in e.heatmaps)  # not constant
    # the top 3 by the same model, best first, and its probabilities
    probs = explainer.predict(e.image[None])[0]
    assert e.genres == [GENRES[j] for j in np.argsort(-probs)[:3]]
    np.testing.assert_allclose(e.probabilities, probs, atol=1e-5)


def test_named_genre_and_unknown_genre(explainer, tmp_path):
    e = explainer.explain(striped_poster(tmp_path / "p.jpg"), genres=["Horror"])
    assert e.genres == ["Horror"] and e.heatmaps.shape == (1, *INPUT_SIZE)
    with pytest.raises(PosterGenreError, match="'Westerns': not a genre"):
        explainer.explain(striped_poster(tmp_path / "p.jpg"), genres=["Westerns"])


def test_matches_captum_layer_grad_cam(explainer, tmp_path):
    captum = pytest.importorskip("captum.attr")
    image = load_poster_array(striped_poster(tmp_path / "p.jpg", 4), INPUT_SIZE)
    _, targets, maps = explainer.explain_batch(image[None], 3)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    cam = captum.LayerGradCam(explainer.model, explainer.layer)
    attr = cam.attribute(x.repeat(3, 1, 1, 1), target=targets[0].tolist(),
                         relu_attributions=True)
    attr = captum.LayerAttribution.interpolate(attr, INPUT_SIZE, "bilinear")[:, 0].detach()
    attr = attr / attr.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    np.testing.assert_allclose(maps[0], attr.numpy(), atol=1e-4)


class TwoPatchModel(nn.Module):
    """Genre 0 is how much red the poster has, genre 1 how much blue: a 1x1 conv with a red
    and a blue detector, a 4x4 pool (a coarse map, as a real last stage), mean, identity."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = (64, 48)
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1, -1], [-1, -1, 1]])[:, :, None, None])
            self.conv.bias.zero_()
        self.stage = nn.Sequential(self.conv, nn.ReLU(), nn.AvgPool2d(4))

    def explain_layer(self) -> nn.Module:
        return self.stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8 * self.stage(x).mean((2, 3)) - 1


def test_heat_lies_on_the_region_the_genre_depends_on():
    model = TwoPatchModel().eval().requires_grad_(False)
    x = torch.full((1, 3, 64, 48), 0.1)
    red, blue = (slice(4, 24), slice(4, 20)), (slice(36, 60), slice(24, 44))
    x[0, :, red[0], red[1]] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    x[0, :, blue[0], blue[1]] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    _, _, maps = grad_cam(model, model.explain_layer(), x, torch.tensor([[0, 1]]))
    for heat, inside, other in ((maps[0, 0], red, blue), (maps[0, 1], blue, red)):
        mask = torch.zeros(64, 48, dtype=torch.bool)
        mask[inside] = True
        assert heat[inside].mean() > 0.6  # hot where the genre's evidence is
        assert heat[other].mean() < 0.05  # cold on the other genre's patch
        assert heat[~mask].mean() < 0.1
        peak = np.unravel_index(int(heat.argmax()), heat.shape)
        assert mask[peak]


def test_flip_average_maps_are_flipped_back():
    class Mirrored(TwoPatchModel):
        flip_average = True

        def forward(self, x):
            return (super().forward(x) + super().forward(x.flip(3))) / 2

    model = Mirrored().eval().requires_grad_(False)
    x = torch.full((1, 3, 64, 48), 0.1)
    x[0, :, 4:24, 4:20] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    _, _, maps = grad_cam(model, model.explain_layer(), x, torch.tensor([[0]]))
    assert maps[0, 0, 4:24, 4:20].mean() > 0.6 and maps[0, 0, :, 28:].mean() < 0.05


def test_write_explanation_files(explainer, tmp_path):
    e = explainer.explain(striped_poster(tmp_path / "p.jpg"))
    written = write_explanation(e, tmp_path / "out", "p.1")
    names = sorted(p.name for p in written)
    assert names == sorted([f"p.1_{g}.{ext}" for g in e.genres for ext in ("png", "npy")]
                           + ["p.1_summary.png"])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / f"p.1_{e.genres[0]}.npy"),
                                  e.heatmaps[0])
    assert Image.open(tmp_path / "out" / f"p.1_{e.genres[0]}.png").size == INPUT_SIZE[::-1]
    assert Image.open(tmp_path / "out" / "p.1_summary.png").size[0] > 3 * INPUT_SIZE[1]


def test_cli_writes_maps_and_reports_bad_inputs(run_dir, tmp_path):
    good = striped_poster(tmp_path / "114709.jpg")
    result = run_cli("explain", str(good), str(tmp_path / "missing.jpg"),
                                          "--model", str(run_dir), "--out", str(tmp_path / "o"),
                                          "--genre", "Drama")
    assert result.exit_code == 1
    assert "missing.jpg: no such file" in result.output
    assert "Drama (" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "114709_Drama.npy", "114709_Drama.png", "114709_summary.png"]
    assert np.load(tmp_path / "o" / "114709_Drama.npy").shape == INPUT_SIZE

    bad = run_cli("explain", str(good), "--model", str(run_dir),
                                       "--out", str(tmp_path / "o2"), "--genre", "Nope")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")
    assert not (tmp_path / "o2").exists()


def test_cli_explains_urls_through_the_fetcher(run_dir, tmp_path, httpserver):
    data = striped_poster(tmp_path / "p.jpg").read_bytes()
    httpserver.expect_request("/120338.jpg").respond_with_data(data, content_type="image/jpeg")
    httpserver.expect_request("/gone.jpg").respond_with_data("no", status=404)
    good, gone = httpserver.url_for("/120338.jpg"), httpserver.url_for("/gone.jpg")
    result = run_cli("explain", good, gone, "--model", str(run_dir), "--out",
                     str(tmp_path / "o"), "--genre", "Drama")
    assert result.exit_code == 1
    assert f"error: {gone}: HTTP 404 NOT FOUND" in result.output
    assert (tmp_path / "o" / "120338_Drama.npy").is_file()


# -- POST /explain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(run_dir):
    predictor = Predictor.load(run_dir, backend="torch")
    app = create_app(predictor, Limits(max_upload_bytes=200_000, max_batch_files=3))
    with TestClient(app) as c:
        yield c


def decode_heatmap(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    import base64

    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_explain_endpoint(client, explainer, tmp_path):
    poster = striped_poster(tmp_path / "p.jpg")
    data = poster.read_bytes()
    r = client.post("/explain", files={"file": ("my poster.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = explainer.explain(data)
    assert body["path"] == "my poster.jpg"
    assert [x["genre"] for x in body["explanations"]] == expected.genres
    for x in body["explanations"]:
        assert x["probability"] == pytest.approx(expected.probability(x["genre"]), abs=1e-3)
        image = decode_heatmap(x["heatmap"])
        assert image.mode == "RGBA" and image.size == INPUT_SIZE[::-1]
        alpha = np.asarray(image)[..., 3]
        assert alpha.max() > 100 and alpha.min() < alpha.max()  # transparent where cold

    r = client.post("/explain?genre=Horror", files={"file": ("p.jpg", data)})
    assert [x["genre"] for x in r.json()["explanations"]] == ["Horror"]
    r = client.post("/explain?genre=Nope", files={"file": ("p.jpg", data)})
    assert r.status_code == 422 and "'Nope': not a genre" in r.json()["detail"]


def bad_requests(tmp_path):
    cut = make_poster(tmp_path / "c.jpg").read_bytes()
    big = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiny, "PNG")
    one = ("a.jpg", cut, "image/jpeg")
    return {
        "not an image": {"files": {"file": ("notes.txt", b"hello")}},
        "empty": {"files": {"file": ("empty.jpg", b"")}},
        "truncated": {"files": {"file": ("cut.jpg", cut[: len(cut) // 2])}},
        "bomb": {"files": {"file": ("bomb.png", bomb_png())}},
        "tiny": {"files": {"file": ("tiny.png", tiny.getvalue())}},
        "no file": {"files": {"other": ("a.jpg", cut)}},
        "text field": {"data": {"file": "http://example.org/p.jpg"}},
        "too large": {"files": {"file": ("big.png", buf.getvalue())}},
        "two files": {"files": [("file", one), ("file", one)]},
        "json": {"json": {"file": "x"}},
    }


def test_explain_errors_match_predict(client, tmp_path):
    for what, kwargs in bad_requests(tmp_path).items():
        p, e = client.post("/predict", **kwargs), client.post("/explain", **kwargs)
        assert p.status_code >= 400, what
        assert (e.status_code, e.json()) == (p.status_code, p.json()), what


def test_explain_is_in_the_schema(client):
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/explain"]["post"]["responses"]
    assert {"200", "413", "415", "422"} <= set(responses)


# -- the report's gallery --------------------------------------------------------------------


def test_gallery_picks_confident_hits_and_false_alarms(explainer, tmp_path):
    from postergenre.explain import gallery

    paths = [str(striped_poster(tmp_path / f"{i}.jpg", i)) for i in range(6)]
    y = np.zeros((6, len(GENRES)), np.int8)
    y[[0, 1, 2], 0] = 1
    scores = np.zeros((6, len(GENRES)), np.float32)
    scores[:, 0] = [0.9, 0.2, 0.8, 0.95, 0.1, 0.7]
    g = gallery(explainer, y, scores, paths, ["Action"], n=2)
    assert [c.index for c in g["Action"]["hits"]] == [0, 2]
    assert [c.index for c in g["Action"]["false alarms"]] == [3, 5]
    assert all(c.image.startswith("data:image/jpeg;base64,") for c in g["Action"]["hits"])


def test_report_shows_the_gallery_only_when_given(explainer, tmp_path):
    from postergenre.evaluate.metrics import compare_with_prior
    from postergenre.evaluate.report import render_report
    from postergenre.explain import gallery

    rng = np.random.default_rng(0)
    paths = [str(striped_poster(tmp_path / f"{i}.jpg", i)) for i in range(12)]
    y = (rng.random((12, len(GENRES))) < 0.4).astype(np.int8)
    y[0] = 1
    scores = rng.random((12, len(GENRES))).astype(np.float32)
    results = compare_with_prior(y, scores, GENRES, y, np.full(len(GENRES), 0.5), n_boot=0)
    args = (results, y, scores, GENRES, np.full(len(GENRES), 0.5), paths, [""] * 12)
    plain = render_report(*args)
    assert "What each genre was learned from" not in plain
    shown = render_report(*args, gallery=gallery(explainer, y, scores, paths, GENRES[:2], n=2))
    assert "What each genre was learned from" in shown
    assert shown.count("class=heat") == 8  # 2 genres x (2 hits + 2 false alarms)


# -- the shipped model -----------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_model_maps_vary_and_differ_between_genres():
    from postergenre.paths import sample_dir

    torch.set_num_threads(2)
    explainer = Explainer.load()
    e = explainer.explain(sample_dir() / "posters" / "3500822.jpg")
    assert e.heatmaps.shape == (3, 368, 250)
    assert all(m.std() > 0.05 for m in e.heatmaps)
    assert np.abs(e.heatmaps[0] - e.heatmaps[1]).mean() > 0.05  # each genre its own map


def test_evaluate_run_writes_the_gallery_only_when_asked(tmp_path):
    from conftest import make_small_dataset, make_tiny_run

    from postergenre.scoring import evaluate_run

    genres = ["Action", "Comedy", "Drama"]
    dataset = make_small_dataset(tmp_path, genres)
    run = make_tiny_run(tmp_path / "run", genres, size=(80, 80))
    evaluate_run(run, dataset, "test", tmp_path / "with", n_boot=0, backend="torch", gallery=1)
    evaluate_run(run, dataset, "test", tmp_path / "without", n_boot=0, backend="torch")
    with_gallery = (tmp_path / "with" / "report.html").read_text()
    assert "What each genre was learned from" in with_gallery
    assert with_gallery.count("class=heat") == 6  # 3 genres x (1 hit + 1 false alarm)
    assert "What each genre was learned from" not in (tmp_path / "without" / "report.html"
                                                      ).read_text()


@pytest.mark.parametrize("name", ["custom-cnn", "vgg16", "efficientnet-lite0"])
def test_every_registered_model_has_a_map_to_explain(name):
    from postergenre.explain import explain_layer
    from postergenre.models import create_model

    torch.manual_seed(0)
    kwargs = {"pretrained": False} if name.startswith("efficientnet") else {}
    model = create_model(name, 4, input_size=(96, 80), **kwargs).eval().requires_grad_(False)
    x = torch.rand(2, 3, 96, 80)
    probs, targets, maps = grad_cam(model, explain_layer(model), x, 2)
    assert maps.shape == (2, 2, 96, 80) and targets.shape == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.sigmoid(model(x)))  # the hook changes nothing
    assert maps.min() >= 0 and maps.max() <= 1
    assert (maps[:, 0].flatten(1).std(1) > 0).all()  # the top genre's map varies (a random
    # network's other maps may be all zero: Grad-CAM's ReLU of a negative map)
