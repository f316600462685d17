"""Losses, positive weights and rare-genre sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from postergenre.errors import PosterGenreError
from postergenre.train.losses import AsymmetricLoss, make_loss, positive_weights
from postergenre.train.sampling import EpochSampler, rare_genre_weights


def test_bce_matches_torch_and_pos_weight_scales_positives():
    logits, targets = torch.randn(6, 4), (torch.rand(6, 4) > 0.5).float()
    assert torch.allclose(make_loss("bce")(logits, targets),
                          F.binary_cross_entropy_with_logits(logits, targets))
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w)
    assert torch.allclose(make_loss("bce", w)(logits, targets), expected)


def test_asl_without_focusing_or_clip_is_bce():
    logits, targets = torch.randn(8, 5), (torch.rand(8, 5) > 0.5).float()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(asl(logits, targets), bce, atol=1e-6)


def test_asl_ignores_easy_negatives_and_keeps_hard_ones():
    asl = make_loss("asl", gamma_neg=4, clip=0.05)
    easy = asl(torch.tensor([[-4.0]]), torch.tensor([[0.0]]))  # p = 0.018 < clip
    hard = asl(torch.tensor([[3.0]]), torch.tensor([[0.0]]))
    assert easy == 0 and hard > 0.5
    # positives are not down-weighted (gamma_pos = 0): same as BCE
    pos = asl(torch.tensor([[0.3]]), torch.tensor([[1.0]]))
    assert torch.allclose(pos, F.binary_cross_entropy_with_logits(torch.tensor([[0.3]]),
                                                                   torch.tensor([[1.0]])))


def test_make_loss_rejects_unknown_names():
    with pytest.raises(PosterGenreError, match="loss must be one of"):
        make_loss("focal")


def test_positive_weights_are_neg_over_pos_clipped():
    labels = np.zeros((100, 4))
    labels[:50, 0] = 1  # 50/50 -> 1
    labels[:20, 1] = 1  # 80/20 -> 4
    labels[:1, 2] = 1  # 99/1 -> clipped to 10
    w = positive_weights(labels, max_weight=10.0)
    assert w.tolist() == pytest.approx([1.0, 4.0, 10.0, 10.0])
    assert positive_weights(labels, power=0.5)[1] == pytest.approx(2.0)


def test_rare_genre_weights_favour_rare_genres():
    labels = np.zeros((100, 3))
    labels[:90, 0] = 1  # common
    labels[90:, 1] = 1  # rare (10)
    labels[0, 2] = 1  # a common-genre poster that also has a very rare genre
    w = rare_genre_weights(labels, power=1.0)
    assert w.mean() == pytest.approx(1.0)
    assert w[0] > w[95] > w[5]
    assert np.allclose(rare_genre_weights(labels, power=0.0), 1.0)
    # with power 1, the rare genre is drawn about as often as the common one
    sampler, drawn = EpochSampler(100, labels, resample=1.0), np.zeros(3)
    for epoch in range(200):
        sampler.set_epoch(epoch)
        drawn += labels[list(sampler)].sum(axis=0)
    assert 0.5 < drawn[1] / drawn[0] < 2.0


def test_epoch_sampler_shards_the_single_process_batches():
    n, batch, world = 21, 6, 3
    one = EpochSampler(n, seed=3)
    ranks = [EpochSampler(n, seed=3, rank=r, world=world) for r in range(world)]
    for s in [one, *ranks]:
        s.set_epoch(2)
    single = list(one)
    shards = [list(s) for s in ranks]
    per_rank = batch // world
    for step in range(n // batch):
        union = sorted(i for sh in shards for i in sh[step * per_rank:(step + 1) * per_rank])
        assert union == sorted(single[step * batch:(step + 1) * batch])
    assert sorted(single) == list(range(n))
    one.set_epoch(3)
    assert list(one) != single


def test_the_features_mode_draws_its_epochs_from_the_epoch_sampler():
    from torch import nn

    from postergenre.train.recipes import TrainConfig
    from postergenre.train.sources import head_on_arrays

    labels = np.zeros((100, 3), np.float32)
    labels[:90, 0], labels[90:, 1] = 1, 1  # a common genre and a rare one
    x = np.arange(100, dtype=np.float32)[:, None]  # each row is its own index
    config = TrainConfig(model="efficientnet-lite0", mode="features", resample=1.0, seed=7,
                         batch_size=16)
    head = nn.Linear(1, 3)
    source = head_on_arrays(head, head, x, labels, x[:5], labels[:5], config, ["a", "b", "c"])
    sampler = EpochSampler(100, labels, resample=1.0, seed=7)
    drawn = np.zeros(3)
    for epoch in range(50):
        rows = np.concatenate([b[0][:, 0].numpy() for b in source.batches(epoch)]).astype(int)
        assert np.array_equal(rows, sampler.draw(epoch)[0])  # same seed formula, same order
        drawn += labels[rows].sum(axis=0)
    assert 0.5 < drawn[1] / drawn[0] < 2.0  # resampled: the rare genre as often as the common
