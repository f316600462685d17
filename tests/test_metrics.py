"""Metrics against scikit-learn on random data and against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    roc_auc_score,
)
from sklearn.metrics import (
    hamming_loss as sk_hamming_loss,
)

from postergenre.evaluate import metrics as M


@pytest.fixture(params=[0, 1, 2])
def random_case(request) -> tuple[np.ndarray, np.ndarray]:
    """Random labels and scores; seed 1 rounds scores so many tie, seed 2 is tiny."""
    rng = np.random.default_rng(request.param)
    n = 9 if request.param == 2 else 300
    y = (rng.random((n, 6)) < [0.5, 0.3, 0.1, 0.05, 0.2, 0.4]).astype(int)
    y[0, :] = 1  # every genre has a positive ...
    y[1, :] = 0  # ... and a negative
    s = rng.random((n, 6)) + 0.3 * y
    if request.param == 1:
        s = np.round(s, 1)
    return y, s


def test_average_precision_matches_sklearn(random_case):
    y, s = random_case
    expected = [average_precision_score(y[:, j], s[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(M.average_precision(y, s), expected, atol=1e-12)
    micro = average_precision_score(y, s, average="micro")
    assert M.micro_average_precision(y, s) == pytest.approx(micro, abs=1e-12)


def test_roc_auc_matches_sklearn(random_case):
    y, s = random_case
    expected = [roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(M.roc_auc(y, s), expected, atol=1e-12)


def test_f1_and_hamming_match_sklearn(random_case):
    y, s = random_case
    pred = (s >= 0.6).astype(int)
    f = M.f1_scores(y, pred)
    np.testing.assert_allclose(f["f1"], f1_score(y, pred, average=None, zero_division=0))
    assert f["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert f["samples_f1"] == pytest.approx(
        f1_score(y, pred, average="samples", zero_division=1.0))
    assert M.hamming_loss(y, pred) == pytest.approx(sk_hamming_loss(y, pred))


def test_small_case_by_hand():
    # one genre, scores 0.9 0.8 0.7 0.6, labels 1 0 1 0:
    # AP = (1/1 + 2/3) / 2 = 5/6; AUC: pairs (pos > neg) = 0.9>0.8, 0.9>0.6, 0.7>0.6 -> 3/4
    y = np.array([[1], [0], [1], [0]])
    s = np.array([[0.9], [0.8], [0.7], [0.6]])
    assert M.average_precision(y, s)[0] == pytest.approx(5 / 6)
    assert M.roc_auc(y, s)[0] == pytest.approx(3 / 4)
    # all scores tied: AP is the prevalence, AUC one half
    assert M.average_precision(y, np.ones_like(s))[0] == pytest.approx(0.5)
    assert M.roc_auc(y, np.ones_like(s))[0] == pytest.approx(0.5)


def test_undefined_scores_are_nan():
    y = np.array([[0, 1], [0, 1]])
    s = np.array([[0.2, 0.3], [0.1, 0.4]])
    assert np.isnan(M.average_precision(y, s)[0])
    assert np.isnan(M.roc_auc(y, s)).all()  # no negative for genre 1 either


def test_top_k_by_hand():
    # genres A B C D; poster 1 true {D}, poster 2 true {A, B}
    y = np.array([[0, 0, 0, 1], [1, 1, 0, 0]])
    s = np.array([[0.9, 0.8, 0.7, 0.1],   # top-3 A B C: miss
                  [0.1, 0.9, 0.8, 0.7]])  # top-3 B C D: hits B; top-1 B
    assert M.top_k_hit(y, s, 3) == 0.5
    assert M.top_k_hit(y, s, 4) == 1.0
    assert M.precision_at_k(y, s, 1) == 0.5
    assert M.precision_at_k(y, s, 3) == pytest.approx((0 + 1 / 3) / 2)
    assert M.recall_at_k(y, s, 3) == pytest.approx((0 + 1 / 2) / 2)


def test_tune_thresholds_maximises_f1(random_case):
    y, s = random_case
    def f1(truth: np.ndarray, pred: np.ndarray) -> float:
        return 2 * np.sum(truth & pred) / (truth.sum() + pred.sum())

    thr = M.tune_thresholds(y, s)
    for j in range(y.shape[1]):
        truth = y[:, j] > 0
        best = max(f1(truth, s[:, j] >= t) for t in np.unique(s[:, j]))  # every cut, brute force
        assert f1(truth, s[:, j] >= thr[j]) == pytest.approx(best)


def test_tune_thresholds_lies_between_scores():
    y = np.array([[1], [1], [0], [0]])
    s = np.array([[0.9], [0.7], [0.3], [0.1]])
    assert M.tune_thresholds(y, s)[0] == pytest.approx(0.5)
    assert M.tune_thresholds(np.zeros((4, 1)), s)[0] > 0.9  # no positive: never predicted


def test_evaluate_scores_excludes_rare_genres_from_macro():
    rng = np.random.default_rng(0)
    y = np.zeros((100, 3), int)
    y[:40, 0] = 1
    y[50:80, 1] = 1
    y[:3, 2] = 1  # 3 positives: listed, left out of macro averages
    s = rng.random((100, 3))
    r = M.evaluate_scores(y, s, ["A", "B", "Rare"], min_positives=10)
    assert r["excluded_genres"] == ["Rare"]
    assert r["macro_genres"] == ["A", "B"]
    ap = M.average_precision(y, s)
    assert r["macro_ap"] == pytest.approx(ap[:2].mean())
    assert r["per_genre"]["Rare"]["ap"] == pytest.approx(ap[2])
    assert not r["per_genre"]["Rare"]["in_macro"]


def test_prior_baseline_and_bootstrap():
    rng = np.random.default_rng(0)
    train = (rng.random((500, 4)) < [0.5, 0.3, 0.2, 0.1]).astype(int)
    y = (rng.random((400, 4)) < [0.5, 0.3, 0.2, 0.1]).astype(int)
    good = y + rng.normal(0, 0.5, y.shape)
    r = M.compare_with_prior(y, good, list("ABCD"), train, n_boot=200)
    prior = r["prior"]
    # constant scores: AP is each genre's prevalence, AUC one half
    for j, g in enumerate("ABCD"):
        assert prior["per_genre"][g]["ap"] == pytest.approx(y[:, j].mean())
        assert prior["per_genre"][g]["roc_auc"] == pytest.approx(0.5)
    # the prior's top-3 is always A B C
    assert prior["top3_hit"] == pytest.approx(np.mean(y[:, :3].any(axis=1)))
    for res in r.values():
        for key in ("macro_ap", "top3_hit"):
            lo, hi = res["ci"][key]
            assert lo <= res[key] <= hi
    assert r["model"]["ci"]["macro_ap"][0] > prior["ci"]["macro_ap"][1]
