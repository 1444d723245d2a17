"""Tests of rsir_train.milan: losses by hand, the triplet sampler, miners, a tiny training run."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rsir_sdk.metrics import mean_average_precision  # noqa: E402
from rsir_train.milan import (  # noqa: E402
    MilanHead,
    MilanParams,
    TripletSampler,
    balance_loss,
    milan_codes,
    milan_loss,
    mine_triplets,
    push_loss,
    train_milan_head,
    triplet_loss,
)

pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]


# --------------------------------------------------------------------------- losses by hand


def test_triplet_loss_by_hand():
    anchor = torch.tensor([[0.6, 0.8], [0.3, 0.4]])
    positive = torch.tensor([[0.8, 0.6], [0.5, 0.0]])
    negative = torch.tensor([[0.0, 0.5], [0.8, 0.6]])
    # rows are L2-normalised first: (0.3, 0.4) -> (0.6, 0.8); (0.5, 0) -> (1, 0); (0, 0.5) -> (0, 1)
    # triplet 1: |a-p|^2 = 0.2^2 + 0.2^2 = 0.08; |a-n|^2 = 0.6^2 + 0.2^2 = 0.40
    #            max(0, 0.08 - 0.40 + 0.2) = max(0, -0.12) = 0
    # triplet 2: |a-p|^2 = 0.4^2 + 0.8^2 = 0.80; |a-n|^2 = 0.2^2 + 0.2^2 = 0.08
    #            max(0, 0.80 - 0.08 + 0.2) = 0.92
    # mean = (0 + 0.92) / 2 = 0.46
    assert float(triplet_loss(anchor, positive, negative, margin=0.2)) == pytest.approx(0.46)
    # margin 0.5: triplet 1 gives 0.08 - 0.40 + 0.5 = 0.18, triplet 2 1.22: mean 0.70
    assert float(triplet_loss(anchor, positive, negative, margin=0.5)) == pytest.approx(0.70)


def test_push_loss_by_hand():
    b = torch.tensor([[0.5, 1.0], [0.0, 0.75]])
    # row 1: (0)^2 + (0.5)^2 = 0.25; row 2: (-0.5)^2 + (0.25)^2 = 0.3125
    # mean over rows 0.28125, divided by K = 2: 0.140625, negated
    assert float(push_loss(b)) == pytest.approx(-0.140625)


def test_balance_loss_by_hand():
    b = torch.tensor([[0.5, 1.0], [0.0, 0.75]])
    # row means 0.75 and 0.375 -> minus 0.5: 0.25, -0.125 -> squares 0.0625, 0.015625
    # mean (0.0625 + 0.015625) / 2 = 0.0390625
    assert float(balance_loss(b)) == pytest.approx(0.0390625)


def test_milan_loss_combines_the_parts_with_their_weights():
    a, p, n = torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 0.75]]), torch.tensor([[1.0, 0.0]])
    params = MilanParams(push_weight=0.001, balance_weight=1.0)
    total, parts = milan_loss(a, p, n, params)
    every = torch.cat([a, p, n])  # push and balance see all three
    expected = triplet_loss(a, p, n, 0.2) + 0.001 * push_loss(every) + balance_loss(every)
    assert float(total) == pytest.approx(float(expected))
    assert set(parts) == {"loss", "triplet", "push", "balance"}
    assert float(parts["balance"]) == pytest.approx(float(balance_loss(every)))


def test_default_hyper_parameters_are_the_authors():
    p = MilanParams()
    assert (p.margin, p.push_weight, p.balance_weight) == (0.2, 0.001, 1.0)
    assert (p.lr, p.betas, p.iterations, p.triplets_per_batch) == (1e-4, (0.5, 0.9), 10_000, 30)
    assert (p.hidden, p.negative_slope, p.miner) == ((1024, 512), 0.2, "batch-hard")
    assert MilanParams.authors().miner == "random"
    assert p.to_dict()["betas"] == [0.5, 0.9]


def test_head_architecture():
    head = MilanHead(2048, 64)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    assert shapes == [(2048, 1024), (1024, 512), (512, 64)]
    slopes = [m.negative_slope for m in head.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert slopes == [0.2, 0.2]
    b = head(torch.randn(5, 2048) * 10)
    assert b.shape == (5, 64) and bool(((b > 0) & (b < 1)).all())
    with pytest.raises(ValueError, match="multiple of 8"):
        MilanHead(16, 12)


# --------------------------------------------------------------------------- sampler


def test_sampler_never_uses_a_negative_of_the_anchor_class():
    # unbalanced classes, one singleton (can only ever be a negative)
    labels = np.array(["solo"] + ["a"] * 2 + ["b"] * 3 + ["c"] * 50 + ["d"] * 7)
    sampler = TripletSampler(labels, seed=1, triplets_per_batch=30)
    batches = np.concatenate([sampler.sample() for _ in range(2000)])
    a, p, n = batches.T
    assert np.all(labels[a] == labels[p])
    assert np.all(labels[n] != labels[a])
    assert np.all(a != p)
    assert "solo" not in set(labels[a]) and "solo" in set(labels[n])
    assert set(labels[a]) == {"a", "b", "c", "d"}


def test_sampler_one_class_pair_per_batch_with_distinct_items():
    # the authors' draw: 30 anchors + 30 positives = 60 distinct items of one class
    labels = np.repeat(["x", "y", "z"], 60)
    sampler = TripletSampler(labels, seed=0)
    for batch in (sampler.sample() for _ in range(50)):
        assert batch.shape == (30, 3) and batch.dtype == np.int64
        assert len(set(batch[:, :2].ravel())) == 60
        assert len(set(labels[batch[:, 0]])) == 1 and len(set(labels[batch[:, 2]])) == 1


def test_sampler_is_seeded_and_iterable():
    labels = [0, 0, 1, 1, 2, 2, 2]
    first = TripletSampler(labels, seed=5, triplets_per_batch=4)
    second = TripletSampler(labels, seed=5, triplets_per_batch=4)
    it = iter(first)
    for _ in range(10):
        np.testing.assert_array_equal(next(it), second.sample())


def test_sampler_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        TripletSampler(["a", "a", "a"])
    with pytest.raises(ValueError, match="at least 2 items"):
        TripletSampler(["a", "b", "c"])


# --------------------------------------------------------------------------- miners


def test_batch_hard_miner_by_hand():
    # 1-D positions on a quarter circle (all non-negative, unit length)
    angles = torch.tensor([0.0, 0.2, 0.5, 0.6, 1.5])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1])
    a, p, n = mine_triplets(emb, labels, strategy="batch-hard")
    # anchor 0: farthest positive 2 (angle 0.5), nearest negative 3 (0.6)
    # anchor 3: its only positive is 4, nearest negative 2
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]
    assert n.tolist() == [3, 3, 3, 2, 2]
    assert bool((labels[a] == labels[p]).all() and (labels[a] != labels[n]).all())


def test_semi_hard_miner_prefers_a_negative_beyond_the_positive():
    angles = torch.tensor([0.0, 0.3, 0.1, 0.4, 1.2])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    a, p, n = mine_triplets(emb, labels, margin=0.2, strategy="semi-hard")
    pairs = {(int(x), int(y)): int(z) for x, y, z in zip(a, p, n)}
    # anchor 0, positive 1 (angle 0.3): negatives at 0.1 (closer), 0.4, 1.2 -> 3 (0.4) is
    # the nearest one farther than the positive
    assert pairs[(0, 1)] == 3
    # anchor 1, positive 0 (0.3 away): negatives 2 (0.2 away), 3 (0.1), 4 (0.9) -> 4
    assert pairs[(1, 0)] == 4
    assert all(labels[x] == labels[y] != labels[z] for (x, y), z in pairs.items())


# --------------------------------------------------------------------------- training


def clustered_features(n_per_class: int, seed: int, separation: float = 0.5):
    """5 Gaussian clusters in 64-d; the cluster means are fixed, ``seed`` draws the points."""
    means = np.random.default_rng(0).normal(0, 1, (5, 64)) * separation
    labels = np.repeat(np.arange(5), n_per_class)
    noise = np.random.default_rng(seed).normal(0, 1, (len(labels), 64))
    return torch.tensor(means[labels] + noise, dtype=torch.float32), labels


def leave_one_out_map(head, feats, labels):
    codes = milan_codes(head, feats)
    return mean_average_precision(codes, labels, codes, labels, exclude_self=True)


FAST = dict(iterations=300, lr=1e-3, hidden=(128, 64))


@pytest.mark.parametrize("miner", ["random", "batch-hard", "semi-hard"])
def test_tiny_head_learns_clusters(miner):
    train_x, train_y = clustered_features(40, seed=1)
    test_x, test_y = clustered_features(40, seed=2)  # unseen points of the same clusters
    untrained = train_milan_head(train_x, train_y, 16, MilanParams(**FAST | {"iterations": 0}))
    trained = train_milan_head(train_x, train_y, 16, MilanParams(**FAST, miner=miner))
    before = leave_one_out_map(untrained, test_x, test_y)
    after = leave_one_out_map(trained, test_x, test_y)
    # chance is ~0.2 (5 balanced classes); a random head (LSH-like) is near it
    assert before < 0.45
    assert after > 0.8
    assert after > before + 0.35


def test_training_is_seeded_and_reports_progress():
    x, y = clustered_features(10, seed=3)
    calls = []
    params = MilanParams(iterations=25, log_every=10, hidden=(32,), seed=4)
    one = train_milan_head(x, y, 8, params, progress=lambda *a: calls.append(a))
    two = train_milan_head(x, y, 8, params)
    other = train_milan_head(x, y, 8, MilanParams(iterations=25, hidden=(32,), seed=5))
    for (name, w1), w2, w3 in zip(
        one.state_dict().items(), two.state_dict().values(), other.state_dict().values()
    ):
        assert torch.equal(w1, w2), name
    assert not all(torch.equal(w1, w3) for w1, w3 in zip(one.parameters(), other.parameters()))
    assert [c[:2] for c in calls] == [(10, 25), (20, 25), (25, 25)]
    # the loss shown is the objective optimised: the classifier's term (on by default) too
    last = calls[-1][2]
    assert set(last) == {"loss", "triplet", "push", "balance", "ce"}
    assert last["loss"] == pytest.approx(
        last["triplet"] + params.push_weight * last["push"]
        + params.balance_weight * last["balance"] + params.classifier_weight * last["ce"],
        rel=1e-4, abs=1e-6)
    assert last["ce"] > 0
    assert not one.training


def test_codes_threshold_at_one_half():
    head = MilanHead(4, 8, hidden=())
    with torch.no_grad():
        last = head.mlp[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0, -2.0, 1.0, 1.0, 1.0]))
    # b = sigmoid(bias): > 0.5 for positive bias; sigmoid(0) = 0.5 exactly -> bit 0
    # bits 1 0 0 1 0 1 1 1 -> 0b10010111 = 151
    assert milan_codes(head, torch.zeros(2, 4)).tolist() == [[151], [151]]


def test_training_input_errors():
    with pytest.raises(ValueError, match="one label per row"):
        train_milan_head(torch.zeros(4, 3), [0, 1, 0], 8, MilanParams(iterations=1))


def test_validation_split_selects_the_best_head_and_stops_early():
    from rsir_train.milan.trainer import validation_indices

    y = np.repeat(np.arange(5), 30)
    fit, val = validation_indices(y, 0.2, seed=0)
    assert len(val) == 30 and not set(fit) & set(val) and len(fit) + len(val) == 150
    assert all((y[val] == c).sum() == 6 for c in range(5))  # per class
    assert np.array_equal(val, validation_indices(y, 0.2, seed=0)[1])
    x, labels = clustered_features(30, seed=1)
    report = {}
    params = MilanParams(**FAST | {"iterations": 2000}, val_every=50, patience=3)
    head = train_milan_head(x[fit], labels[fit], 16, params, validation=(x[val], labels[val]),
                            report=report)
    assert report["stopped_at"] < 2000  # stopped early: 3 validations without improvement
    assert report["best_iteration"] == max(report["val_curve"], key=lambda c: c[1])[0]
    assert report["best_val_map"] == max(v for _, v in report["val_curve"])
    # the head returned is the best one: its validation mAP (tie-aware: in expectation over
    # the order of tied codes, not the order the validation images are listed in) is the best
    got = mean_average_precision(milan_codes(head, x[val]), labels[val],
                                 milan_codes(head, x[fit]), labels[fit], ties="expected")
    assert got == pytest.approx(report["best_val_map"], abs=1e-4)


def test_authors_preset_has_no_validation():
    p = MilanParams.authors()
    assert (p.val_fraction, p.patience, p.iterations) == (0.0, 0, 10_000)
    assert MilanParams().val_fraction == 0.2


def test_archive_validation_scores_held_out_images_among_themselves():
    """val_metric="archive" (the default on a 60-40 split) chooses the head by the MiLAN
    protocol's own figure on held-out images: leave-one-out mAP@20 among them, the fit part not
    ranked at all."""
    from rsir_train.milan.trainer import resolve_val_metric, validation_indices

    assert resolve_val_metric("auto", "60-40") == "archive"
    assert resolve_val_metric("auto", "80-20") == "database"
    assert resolve_val_metric("database", "60-40") == "database"
    with pytest.raises(ValueError, match="auto, database or archive"):
        resolve_val_metric("queries", "60-40")
    x, labels = clustered_features(30, seed=1)
    fit, val = validation_indices(labels, 0.2, seed=0)
    report = {}
    params = MilanParams(**FAST | {"iterations": 400}, val_every=50, patience=0,
                         val_metric="archive")
    head = train_milan_head(x[fit], labels[fit], 16, params, validation=(x[val], labels[val]),
                            report=report)
    assert report["val_metric"] == "archive"
    codes = milan_codes(head, x[val])
    loo = mean_average_precision(codes, labels[val], codes, labels[val], topk=20,
                                 exclude_self=True, ties="expected")
    assert loo == pytest.approx(report["best_val_map"], abs=1e-4)
    against_fit = mean_average_precision(codes, labels[val], milan_codes(head, x[fit]),
                                         labels[fit], ties="expected")
    assert against_fit != pytest.approx(loo, abs=1e-6)  # a different figure, not a rename


def test_input_dropout_is_seeded_changes_training_and_is_checked():
    """Input dropout is a training-time regulariser: deterministic for a seed (its own
    generator, the global RNG untouched), a different head than without it, and an impossible
    rate is refused when the parameters are made."""
    x, labels = clustered_features(20, seed=1)
    params = MilanParams(**FAST | {"iterations": 60}, input_dropout=0.3)
    state = torch.random.get_rng_state()
    a = train_milan_head(x, labels, 16, params)
    assert torch.equal(state, torch.random.get_rng_state())
    b = train_milan_head(x, labels, 16, params)
    plain = train_milan_head(x, labels, 16, MilanParams(**FAST | {"iterations": 60}))
    wa, wb, wp = (m.mlp[0].weight for m in (a, b, plain))
    assert torch.equal(wa, wb) and not torch.allclose(wa, wp)
    # nothing is dropped at inference: codes of the same rows are the same every call
    assert np.array_equal(milan_codes(a, x), milan_codes(a, x))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="input_dropout"):
            MilanParams(input_dropout=bad)


@pytest.mark.parametrize("miner", ["random", "batch-hard"])
def test_auxiliary_classifier_trains_the_head_and_is_not_exported(miner):
    """classifier_weight (1 by default) adds a label classifier's cross-entropy on b: the head
    learns differently, yet it is the same module (no classifier in its weights, so the export
    is the authors' head); the authors' preset turns it off; a negative weight is refused."""
    x, labels = clustered_features(20, seed=1)
    base = FAST | {"iterations": 60, "miner": miner}
    with_clf = train_milan_head(x, labels, 16, MilanParams(**base, classifier_weight=1.0))
    without = train_milan_head(x, labels, 16, MilanParams(**base, classifier_weight=0.0))
    assert MilanParams().classifier_weight == 1.0 and MilanParams.authors().classifier_weight == 0.0
    assert set(with_clf.state_dict()) == set(without.state_dict())
    assert not torch.allclose(with_clf.mlp[0].weight, without.mlp[0].weight)
    with pytest.raises(ValueError, match="classifier_weight"):
        MilanParams(classifier_weight=-1.0)


def test_weight_averaging_returns_the_moving_average_and_validates_it():
    """ema_decay (Polyak averaging, off by default and in the authors' preset): the head
    returned is the exponential moving average of the trained weights, with the decay ramped
    as min(decay, (1 + t) / (10 + t)); with a validation split the averaged head is the one
    scored and kept; an impossible decay is refused."""
    x, labels = clustered_features(20, seed=1)
    base = FAST | {"iterations": 1}
    init = train_milan_head(x, labels, 16, MilanParams(**FAST | {"iterations": 0}))
    one_step = train_milan_head(x, labels, 16, MilanParams(**base))
    averaged = train_milan_head(x, labels, 16, MilanParams(**base, ema_decay=0.9))
    d = min(0.9, 2.0 / 11.0)  # t = 1
    for name, w0 in init.state_dict().items():
        expected = d * w0 + (1 - d) * one_step.state_dict()[name]
        assert torch.allclose(averaged.state_dict()[name], expected, atol=1e-6), name
    # a long run: the average is not the last weights, and a near-zero decay is the last weights
    long = FAST | {"iterations": 80}
    plain = train_milan_head(x, labels, 16, MilanParams(**long))
    smooth = train_milan_head(x, labels, 16, MilanParams(**long, ema_decay=0.99))
    follow = train_milan_head(x, labels, 16, MilanParams(**long, ema_decay=1e-9))
    assert not torch.allclose(smooth.mlp[0].weight, plain.mlp[0].weight, atol=1e-4)
    assert torch.allclose(follow.mlp[0].weight, plain.mlp[0].weight, atol=1e-6)
    # validation keeps the best averaged head: its figure is the best one recorded
    from rsir_train.milan.trainer import validation_indices

    fit, val = validation_indices(labels, 0.2, seed=0)
    report = {}
    head = train_milan_head(x[fit], labels[fit], 16,
                            MilanParams(**FAST | {"iterations": 200}, val_every=50, patience=0,
                                        ema_decay=0.95),
                            validation=(x[val], labels[val]), report=report)
    got = mean_average_precision(milan_codes(head, x[val]), labels[val],
                                 milan_codes(head, x[fit]), labels[fit], ties="expected")
    assert got == pytest.approx(report["best_val_map"], abs=1e-4)
    assert MilanParams().ema_decay == 0.0 and MilanParams.authors().ema_decay == 0.0
    for bad in (1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay"):
            MilanParams(ema_decay=bad)


def test_an_archive_milan_cannot_make_triplets_of_is_refused_up_front(tmp_path):
    """One class, or classes of one training image, failed after the features were computed
    ("min() arg is an empty sequence", a label index); now one line naming the classes."""
    from PIL import Image

    from rsir_sdk.archive import open_archive
    from rsir_sdk.splits import Split
    from rsir_train.errors import TrainingError
    from rsir_train.milan.trainer import check_triplet_classes

    for label, n in (("beach", 1), ("lake", 4)):
        (tmp_path / label).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / label / f"{i}.png")
    archive = open_archive(tmp_path, label_from="top")
    split = Split("all", 0, [it.id for it in archive.items], [], archive.fingerprint(), "t")
    with pytest.raises(TrainingError, match=r"needs 2 classes with 2 or more training images "
                                            r"each \(or --miner random\); it holds beach \(1\), "
                                            r"lake \(4\)"):
        check_triplet_classes(archive, split, "batch-hard")
    check_triplet_classes(archive, split, "random")         # two classes: random triplets do
    one = Split("all", 0, [it.id for it in archive.items if it.label == "lake"], [], "", "t")
    with pytest.raises(TrainingError, match=r"needs 2 classes, one of 2 or more training "
                                            r"images; it holds lake \(4\)"):
        check_triplet_classes(archive, one, "random")
    singles = Split("all", 0, [it.id for it in archive.items if it.label == "beach"]
                    + [it.id for it in archive.items if it.label == "lake"][:1], [], "", "t")
    with pytest.raises(TrainingError, match=r"it holds beach \(1\), lake \(1\)"):
        check_triplet_classes(archive, singles, "random")
