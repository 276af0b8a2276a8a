"""Varifocal Loss against its closed form (spec §4.2)."""

import math

import pytest
import torch

from varifocal.losses import VarifocalLoss, varifocal_loss

EPS32 = torch.finfo(torch.float32).eps  # MMDetection adds it to avg_factor


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x):
    return math.log1p(math.exp(x))


ALPHA, GAMMA = 0.75, 2.0
# Positive element: q = 0.6, logit 0 -> p = 0.5.
#   BCE = -[0.6 log 0.5 + 0.4 log 0.5] = log 2; weight q = 0.6 -> 0.6 log 2 = 0.41588830...
POS = 0.6 * math.log(2.0)
# Negative element: q = 0, logit x = 1.5 -> BCE = -log(1 - p) = softplus(1.5);
#   weight alpha |p - 0|^2 -> VFL = 0.75 * sigmoid(1.5)^2 * softplus(1.5).
X_NEG = 1.5
NEG = ALPHA * sigmoid(X_NEG) ** 2 * softplus(X_NEG)


def test_elementwise_values():
    pred = torch.tensor([[0.0, X_NEG]])
    target = torch.tensor([[0.6, 0.0]])
    out = varifocal_loss(pred, target)
    assert out.shape == (1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[POS, NEG]]), rtol=1e-6, atol=0)


def test_not_iou_weighted_uses_unit_weight_for_positives():
    # Positive weight 1 instead of q: BCE alone = log 2. Negatives unchanged.
    pred, target = torch.tensor([[0.0, X_NEG]]), torch.tensor([[0.6, 0.0]])
    out = varifocal_loss(pred, target, iou_weighted=False)
    torch.testing.assert_close(out, torch.tensor([[math.log(2.0), NEG]]), rtol=1e-6, atol=0)


def test_gradient_analytic():
    pred = torch.tensor([[0.0, X_NEG]], requires_grad=True)
    varifocal_loss(pred, torch.tensor([[0.6, 0.0]])).sum().backward()
    # Positive: d/dx q*(softplus(x) - q x) = q (sigmoid(x) - q) = 0.6 * (0.5 - 0.6) = -0.06
    # (the weight q does not depend on x).
    # Negative: d/dx alpha s^2 softplus(x) with s = sigmoid(x), ds/dx = s(1-s):
    #   = alpha [2 s * s(1-s) * softplus(x) + s^2 * s] = alpha s^2 [2 (1-s) softplus(x) + s].
    #   The s^2 factor is NOT detached; a detached factor would give only alpha s^3.
    s = sigmoid(X_NEG)
    g_neg = ALPHA * s * s * (2.0 * (1.0 - s) * softplus(X_NEG) + s)
    torch.testing.assert_close(pred.grad, torch.tensor([[-0.06, g_neg]]), rtol=1e-5, atol=1e-7)


def test_gradcheck_finite_differences():
    # float64 stays float64, so torch's finite-difference check applies.
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.0, 0.7, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.2, 0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: varifocal_loss(p, target), (pred,))


def test_module_reduction():
    pred = torch.tensor([[0.0, X_NEG]])
    target = torch.tensor([[0.6, 0.0]])
    # avg_factor 2: (POS + NEG) / (2 + eps32), times loss_weight 2.
    out = VarifocalLoss(loss_weight=2.0)(pred, target, avg_factor=2.0)
    assert out.dim() == 0
    assert out.item() == pytest.approx(2.0 * (POS + NEG) / (2.0 + EPS32), rel=1e-6)
    # Tensor avg_factor behaves the same.
    out_t = VarifocalLoss(loss_weight=2.0)(pred, target, avg_factor=torch.tensor(2.0))
    assert out_t.item() == pytest.approx(out.item(), rel=1e-7)
    # No avg_factor: mean over the N*C = 2 elements.
    assert VarifocalLoss()(pred, target).item() == pytest.approx((POS + NEG) / 2.0, rel=1e-6)


def test_low_precision_is_upcast():
    pred = torch.tensor([[0.0, X_NEG]], dtype=torch.bfloat16)  # both exactly representable
    out = VarifocalLoss()(pred, torch.tensor([[0.6, 0.0]]), avg_factor=1.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx((POS + NEG) / (1.0 + EPS32), rel=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        varifocal_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_label_weights_drop_rows_before_the_reduction():
    """weight [N] scales each row (RetinaNet's VFL variant passes its label weights)."""
    pred = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.2]])
    target = torch.tensor([[0.6, 0.0], [0.0, 0.0], [0.0, 0.9]])
    loss = VarifocalLoss()
    weighted = loss(pred, target, avg_factor=2.0, weight=torch.tensor([1.0, 0.0, 0.5]))
    rows = loss(pred[[0]], target[[0]], avg_factor=2.0) + 0.5 * loss(pred[[2]], target[[2]], avg_factor=2.0)
    assert float(weighted) == pytest.approx(float(rows), rel=1e-6)
