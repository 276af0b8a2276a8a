"""IoU loss (zoo_spec §1.14, FCOS)."""

import math

import pytest
import torch

from varifocal.losses import IoULoss

EPS32 = torch.finfo(torch.float32).eps

# A = (0, 0, 2, 2) vs B = (1, 1, 3, 3): areas 4 and 4, intersection 1x1 = 1, union 7 ->
# IoU 1/7, loss -log(1/7) = log 7 = 1.945910. Identical boxes: IoU 1, loss 0.
PRED = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 2.0, 5.0, 9.0]])
TARGET = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 2.0, 5.0, 9.0]])


def test_log_mode_known_value():
    assert IoULoss()(PRED, TARGET).item() == pytest.approx(math.log(7) / 2, rel=1e-6)
    assert IoULoss()(PRED, TARGET, avg_factor=1.0).item() == pytest.approx(math.log(7), rel=1e-6)
    assert IoULoss(loss_weight=2.0)(PRED, TARGET, avg_factor=1.0).item() == pytest.approx(2 * math.log(7), rel=1e-6)


def test_linear_mode():
    # 1 - 1/7 = 6/7 and 0.
    assert IoULoss(mode="linear")(PRED, TARGET, avg_factor=1.0).item() == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="iou_loss.py"):
        IoULoss(mode="square")


def test_disjoint_boxes_clamped_to_eps():
    # IoU 0 -> clamp 1e-6 -> -log(1e-6) = 13.815511.
    pred = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    target = torch.tensor([[5.0, 5.0, 6.0, 6.0]])
    assert IoULoss()(pred, target).item() == pytest.approx(-math.log(1e-6), rel=1e-5)


def test_weights_avg_factor_and_eps32():
    # [N] weight (3, 1): 3·log 7 + 0; / (2 + eps32).
    w = torch.tensor([3.0, 1.0])
    out = IoULoss()(PRED, TARGET, w, avg_factor=2.0)
    assert out.item() == pytest.approx(3 * math.log(7) / (2 + EPS32), rel=1e-6)
    # avg_factor 0: divided by eps32 alone.
    out = IoULoss()(PRED, TARGET, w, avg_factor=0.0)
    assert out.item() == pytest.approx(3 * math.log(7) / EPS32, rel=1e-5)
    # [N, 4] weight averaged to [N]: (1 + 1 + 3 + 3)/4 = 2 and 0 -> 2·log 7.
    w4 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    assert IoULoss()(PRED, TARGET, w4, avg_factor=1.0).item() == pytest.approx(2 * math.log(7), rel=1e-6)
    with pytest.raises(ValueError, match="iou_loss.py"):
        IoULoss()(PRED, TARGET, torch.ones(3))


def test_zero_weights_rule():
    pred = PRED.clone().requires_grad_(True)
    for w in (torch.zeros(2), torch.zeros(2, 4)):
        out = IoULoss()(pred, TARGET, w, avg_factor=0.0)
        assert out.item() == 0.0 and out.requires_grad
        (grad,) = torch.autograd.grad(out, pred)
        assert torch.equal(grad, torch.zeros_like(pred))


def test_gradient_and_dtype():
    pred = PRED.clone().requires_grad_(True)
    IoULoss()(pred, TARGET, avg_factor=1.0).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad[0].abs().sum() > 0
    assert IoULoss()(PRED.half(), TARGET.half()).dtype == torch.float32
    assert IoULoss()(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0
