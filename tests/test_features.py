"""The frozen-feature cache: content keys, reuse, recompute on change, resume, shards, backends."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import make_poster
from PIL import Image

from postergenre.errors import DatasetError
from postergenre.train import features as F
from postergenre.train.features import FeatureCache, FeatureSpec, cache_features, extract_features

SPEC = FeatureSpec(input_size=(64, 48), pool="mean")
FAST = {"backend": "torch"}  # eager: no ONNX export per test


pytestmark = pytest.mark.usefixtures("isolated")


@pytest.fixture
def posters(tmp_path):
    return [make_poster(tmp_path / "p" / f"{i}.jpg", seed=i, size=(48, 64)) for i in range(5)]


def forbid_extraction(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(F, "make_extractor", fail)


def test_cached_features_are_reused_and_keyed_by_content(posters, tmp_path, monkeypatch):
    first = extract_features(posters, SPEC, **FAST, batch_size=2, chunk_size=2)
    assert first.shape == (5, 1280)
    assert len(list(FeatureCache(SPEC).dir.glob("chunk-*"))) == 3
    renamed = shutil.copy(posters[2], tmp_path / "renamed.jpg")
    forbid_extraction(monkeypatch)
    again = extract_features([renamed, *posters[::-1]], SPEC, **FAST)
    np.testing.assert_array_equal(again[1:], first[::-1])
    np.testing.assert_array_equal(again[0], first[2])


def test_a_changed_poster_is_recomputed(posters):
    before = extract_features(posters, SPEC, **FAST)
    make_poster(posters[0], seed=99, size=(48, 64))
    after = extract_features(posters, SPEC, **FAST)
    assert not np.allclose(after[0], before[0])
    np.testing.assert_array_equal(after[1:], before[1:])


def test_unreadable_poster_is_named_and_the_rest_is_kept(posters, tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="bad.jpg"):
        extract_features([*posters[:2], bad, *posters[2:]], SPEC, **FAST,
                         batch_size=1, chunk_size=1)
    forbid_extraction(monkeypatch)
    assert extract_features(posters, SPEC, **FAST).shape == (5, 1280)


def test_ranks_take_interleaved_shares(posters, monkeypatch):
    cache_features(posters, SPEC, **FAST, rank=1, world=2)
    assert len(FeatureCache(SPEC).load()) == 2  # items 1 and 3
    cache_features(posters, SPEC, **FAST, rank=0, world=2)
    assert len(FeatureCache(SPEC).load()) == 5
    forbid_extraction(monkeypatch)
    extract_features(posters, SPEC, **FAST)


def test_flip_spec_is_the_mirrored_poster(posters, tmp_path):
    mirrored = tmp_path / "mirror.png"  # lossless, so only the mirroring differs
    Image.open(posters[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    original = tmp_path / "original.png"
    Image.open(posters[0]).save(original)
    flipped = extract_features([original], FeatureSpec(**{**SPEC.__dict__, "flip": True}),
                               **FAST)
    plain = extract_features([mirrored], SPEC, **FAST)
    np.testing.assert_allclose(flipped, plain, rtol=1e-4, atol=1e-5)


def test_onnx_and_torch_extractors_agree(posters):
    pytest.importorskip("onnxruntime")
    x = np.stack([np.random.default_rng(i).random((3, 64, 48), dtype=np.float32)
                  for i in range(2)])
    onnx, eager = F.make_extractor(SPEC, "onnx"), F.make_extractor(SPEC, "torch")
    assert isinstance(onnx, F._OnnxFeatures)
    np.testing.assert_allclose(onnx(x), eager(x), rtol=1e-3, atol=1e-4)
