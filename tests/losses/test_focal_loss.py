"""Sigmoid focal loss on hard labels against its closed form (spec §4.4)."""

import math

import pytest
import torch

from varifocal.losses import FocalLoss

EPS32 = torch.finfo(torch.float32).eps


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def fl_pos(x, alpha=0.25, gamma=2.0):
    # y = 1: -alpha (1 - p)^gamma log p
    p = sigmoid(x)
    return -alpha * (1.0 - p) ** gamma * math.log(p)


def fl_neg(x, alpha=0.25, gamma=2.0):
    # y = 0: -(1 - alpha) p^gamma log(1 - p)
    p = sigmoid(x)
    return -(1.0 - alpha) * p**gamma * math.log(1.0 - p)


def test_single_element_closed_form():
    # One sample, C = 1, label 0 (positive), logit 0.5.
    # p = sigmoid(0.5) = 0.622459; FL = -0.25 * 0.377541^2 * log(0.622459) = 0.0168868...
    out = FocalLoss()(torch.tensor([[0.5]]), torch.tensor([0]), avg_factor=1.0)
    assert out.item() == pytest.approx(fl_pos(0.5) / (1.0 + EPS32), rel=1e-6)
    assert fl_pos(0.5) == pytest.approx(0.25 * (1 - 0.6224593312) ** 2 * 0.4740769842, rel=1e-8)


def test_background_weights_and_avg_factor():
    pred = torch.tensor([[0.5, -1.0], [2.0, 0.3], [1.0, 1.0]])
    labels = torch.tensor([0, 2, 1])  # C = 2: row 1 is background (all-zero target row)
    weight = torch.tensor([1.0, 1.0, 0.0])  # row 2 ignored
    out = FocalLoss(loss_weight=3.0)(pred, labels, weight=weight, avg_factor=4.0)
    # row 0: class 0 positive at 0.5, class 1 negative at -1.0
    # row 1: both negative (2.0, 0.3); row 2: weight 0.
    total = fl_pos(0.5) + fl_neg(-1.0) + fl_neg(2.0) + fl_neg(0.3)
    assert out.item() == pytest.approx(3.0 * total / (4.0 + EPS32), rel=1e-6)


def test_mean_without_avg_factor_and_gradient():
    pred = torch.tensor([[0.5, -1.0]], requires_grad=True)
    out = FocalLoss()(pred, torch.tensor([1]))
    # class 0 negative at 0.5, class 1 positive at -1.0; mean over N*C = 2 elements.
    assert out.item() == pytest.approx((fl_neg(0.5) + fl_pos(-1.0)) / 2.0, rel=1e-6)
    out.backward()
    # d/dx of the negative term -(1-a) p^2 log(1-p) = (1-a) [2 p^2 (1-p) softplus(x) + p^3]
    # (softplus(x) = -log(1-p)); halved by the mean.
    p = sigmoid(0.5)
    sp = math.log1p(math.exp(0.5))
    g0 = 0.75 * (2 * p * p * (1 - p) * sp + p**3) / 2.0
    assert pred.grad[0, 0].item() == pytest.approx(g0, rel=1e-5)


def test_low_precision_upcast():
    pred = torch.tensor([[0.5]], dtype=torch.float16)  # 0.5 is exact in fp16
    out = FocalLoss()(pred, torch.tensor([0]), avg_factor=1.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(fl_pos(0.5) / (1.0 + EPS32), rel=1e-6)


def test_bad_inputs():
    loss = FocalLoss()
    with pytest.raises(ValueError, match="labels"):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        loss(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="weight"):
        loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), weight=torch.ones(2, 3))
