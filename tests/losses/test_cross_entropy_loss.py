"""Sigmoid and softmax cross-entropy (zoo_spec §1.14)."""

import math

import pytest
import torch

from varifocal.losses import CrossEntropyLoss

EPS32 = torch.finfo(torch.float32).eps
LOG2 = math.log(2.0)


def bce(x, y):
    """BCE with logits by hand: log(1 + e^x) - x·y."""
    return math.log1p(math.exp(x)) - x * y


def test_sigmoid_soft_targets():
    # Logit 0, any target: log 2. Logit 2, target 1: log(1 + e^-2) = 0.126928.
    loss = CrossEntropyLoss(use_sigmoid=True)
    pred = torch.tensor([0.0, 2.0])
    target = torch.tensor([0.5, 1.0])
    assert loss(pred[:1], target[:1]).item() == pytest.approx(LOG2, rel=1e-6)
    assert bce(2.0, 1.0) == pytest.approx(0.1269280110, rel=1e-9)
    assert loss(pred, target).item() == pytest.approx((LOG2 + 0.1269280110) / 2, rel=1e-6)
    # [N] weight and avg_factor: (1·log 2 + 3·0.126928) / (2 + eps32).
    out = loss(pred, target, torch.tensor([1.0, 3.0]), avg_factor=2.0)
    assert out.item() == pytest.approx((LOG2 + 3 * 0.1269280110) / (2 + EPS32), rel=1e-6)


def test_sigmoid_integer_labels_one_hot():
    # pred [2, 2]; labels (0, 2): row 0 one-hot (1, 0), row 1 (label = C = 2) all zero.
    # Row 0: bce(2, 1) = 0.126928, bce(-1, 0) = log(1 + e^-1) = 0.313262.
    # Row 1: bce(0, 0) = log 2 = 0.693147, bce(3, 0) = log(1 + e^3) = 3.048587.
    pred = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 2])
    row0 = 0.1269280110 + 0.3132616875
    row1 = 0.6931471806 + 3.0485873026
    loss = CrossEntropyLoss(use_sigmoid=True)
    assert loss(pred, labels).item() == pytest.approx((row0 + row1) / 4, rel=1e-6)
    assert loss(pred, labels, avg_factor=1.0).item() == pytest.approx(row0 + row1, rel=1e-6)
    # [N] weight broadcast over the classes.
    out = loss(pred, labels, torch.tensor([2.0, 0.5]), avg_factor=1.0)
    assert out.item() == pytest.approx(2 * row0 + 0.5 * row1, rel=1e-6)
    # A negative label is invalid: row weight 0.
    out = loss(pred, torch.tensor([0, -1]), avg_factor=1.0)
    assert out.item() == pytest.approx(row0, rel=1e-6)


def test_sigmoid_rpn_single_channel():
    # C = 1: label 0 = object (target 1), label 1 = background (target 0).
    pred = torch.tensor([[2.0], [-1.0]])
    out = CrossEntropyLoss(use_sigmoid=True)(pred, torch.tensor([0, 1]), avg_factor=2.0)
    assert out.item() == pytest.approx((0.1269280110 + 0.3132616875) / (2 + EPS32), rel=1e-6)


def test_softmax():
    # Logits (0, log 2, 0): probabilities (1/4, 1/2, 1/4).
    pred = torch.tensor([[0.0, LOG2, 0.0], [0.0, LOG2, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 2])  # -log(1/2), -log(1/4), -log(1/3)
    per = [LOG2, math.log(4.0), math.log(3.0)]
    loss = CrossEntropyLoss()
    assert loss(pred, labels).item() == pytest.approx(sum(per) / 3, rel=1e-6)
    assert loss(pred, labels, avg_factor=2.0).item() == pytest.approx(sum(per) / (2 + EPS32), rel=1e-6)
    out = CrossEntropyLoss(loss_weight=2.0)(pred, labels, torch.tensor([1.0, 0.0, 2.0]), 1.0)
    assert out.item() == pytest.approx(2 * (per[0] + 2 * per[2]), rel=1e-6)
    # Label -100 is ignored (loss 0 for that row, still counted in the mean).
    out = loss(pred, torch.tensor([1, -100, 2]))
    assert out.item() == pytest.approx((per[0] + per[2]) / 3, rel=1e-6)


def test_avg_factor_zero_and_dtype():
    out = CrossEntropyLoss(use_sigmoid=True)(torch.zeros(1), torch.ones(1), avg_factor=0.0)
    assert out.item() == pytest.approx(LOG2 / EPS32, rel=1e-6)
    assert CrossEntropyLoss()(torch.zeros(2, 3).half(), torch.tensor([0, 2])).dtype == (torch.float32)


def test_bad_inputs():
    with pytest.raises(TypeError, match="cross_entropy_loss.py"):
        CrossEntropyLoss()(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="cross_entropy_loss.py"):
        CrossEntropyLoss()(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="cross_entropy_loss.py"):
        CrossEntropyLoss(use_sigmoid=True)(torch.zeros(2, 3), torch.zeros(2, 2))
