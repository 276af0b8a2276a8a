"""IoU-weighted GIoU loss (spec §4.3)."""

import pytest
import torch

from varifocal.losses import GIoULoss

EPS32 = torch.finfo(torch.float32).eps

# Hand-computed GIoUs (w = x2 - x1):
# C=(0,0,2,2) vs D=(4,0,6,2): IoU 0, union 8, enclosing 6x2=12 -> GIoU -(12-8)/12 = -1/3,
#   loss 1 - (-1/3) = 4/3.
# E=(0,0,4,4) vs F=(1,1,3,3): F inside E, IoU 4/16, enclosing = E = union -> GIoU 1/4,
#   loss 3/4.
PRED = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
TARGET = torch.tensor([[4.0, 0.0, 6.0, 2.0], [1.0, 1.0, 3.0, 3.0]])


def test_identical_boxes_zero_loss():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    assert GIoULoss()(boxes, boxes, avg_factor=1.0).item() == 0.0


def test_known_boxes_mean():
    # No weight, no avg_factor: mean of (4/3, 3/4) = 25/24.
    assert GIoULoss()(PRED, TARGET).item() == pytest.approx(25 / 24, rel=1e-6)


def test_weighted_reduction_with_avg_factor():
    # loss_weight 2 * (0.5 * 4/3 + 2.0 * 3/4) / 3 = 2 * (2/3 + 3/2) / 3 = 2 * (13/6) / 3 = 13/9
    # (the avg_factor gets + eps32, as MMDetection).
    w = torch.tensor([0.5, 2.0])
    out = GIoULoss(loss_weight=2.0)(PRED, TARGET, weight=w, avg_factor=3.0)
    assert out.item() == pytest.approx(2.0 * (13 / 6) / (3.0 + EPS32), rel=1e-6)
    assert out.item() == pytest.approx(13 / 9, rel=1e-6)


def test_analytic_gradient_contained_box():
    # pred (0.5, 0.25, 1.5, 0.75) strictly inside target (0, 0, 2, 1) (area 2): the overlap is
    # pred's area w*h, union = enclosing = target area 2 (constant), so GIoU = w*h/2 and
    # loss = 1 - w*h/2 = 1 - 1*0.5/2 = 0.75. Gradient of -(x2-x1)(y2-y1)/2:
    # d/dx1 = +h/2 = 0.25, d/dx2 = -h/2 = -0.25, d/dy1 = +w/2 = 0.5, d/dy2 = -w/2 = -0.5.
    pred = torch.tensor([[0.5, 0.25, 1.5, 0.75]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 2.0, 1.0]])
    out = GIoULoss()(pred, target, avg_factor=1.0)
    assert out.item() == pytest.approx(0.75 / (1 + EPS32), rel=1e-6)
    out.backward()
    expected = torch.tensor([[0.25, 0.5, -0.25, -0.5]])
    torch.testing.assert_close(pred.grad, expected, rtol=1e-5, atol=1e-6)


def test_gradcheck_partial_overlap():
    # Boxes away from every max/min kink (no shared coordinate), so finite differences apply.
    f64 = torch.float64
    pred = torch.tensor([[0.0, 0.0, 3.0, 2.0], [1.0, 1.0, 4.0, 5.0]], dtype=f64)
    pred.requires_grad_(True)
    target = torch.tensor([[1.0, 0.5, 4.5, 3.0], [0.5, 2.0, 3.0, 4.0]], dtype=f64)
    w = torch.tensor([0.3, 0.9], dtype=f64)

    def loss(p):
        return GIoULoss()(p, target, weight=w, avg_factor=1.2)

    assert torch.autograd.gradcheck(loss, (pred,))


def test_empty_keeps_graph_with_zero_grad():
    pred = torch.zeros(0, 4, requires_grad=True)
    out = GIoULoss(loss_weight=2.0)(pred, torch.zeros(0, 4), avg_factor=1.0)
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None and pred.grad.shape == (0, 4)
    # Same with an (empty) weight vector.
    pred2 = torch.zeros(0, 4, requires_grad=True)
    GIoULoss()(pred2, torch.zeros(0, 4), weight=torch.zeros(0), avg_factor=1.0).backward()
    assert pred2.grad is not None and pred2.grad.shape == (0, 4)


def test_all_zero_weights_zero_loss_zero_grad():
    pred = PRED.clone().requires_grad_(True)
    out = GIoULoss(loss_weight=2.0)(pred, TARGET, weight=torch.zeros(2), avg_factor=1.0)
    assert out.item() == 0.0
    out.backward()
    torch.testing.assert_close(pred.grad, torch.zeros(2, 4))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        GIoULoss()(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weight"):
        GIoULoss()(torch.zeros(2, 4), torch.zeros(2, 4), weight=torch.ones(3))
