"""L1 and Smooth-L1 losses (zoo_spec §1.14)."""

import pytest
import torch

from varifocal.losses import L1Loss, SmoothL1Loss

EPS32 = torch.finfo(torch.float32).eps

# |pred - target| = (1, 2, 3, 4) and (1, 1, 1, 1): sum 14 over 8 elements.
PRED = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
TARGET = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_l1_mean_and_avg_factor():
    assert L1Loss()(PRED, TARGET).item() == pytest.approx(14 / 8, rel=1e-6)
    # avg_factor counts boxes: the 4 coordinates are summed, 14 / 2 = 7.
    assert L1Loss()(PRED, TARGET, avg_factor=2.0).item() == pytest.approx(7.0, rel=1e-6)
    assert L1Loss(loss_weight=2.0)(PRED, TARGET, avg_factor=2.0).item() == pytest.approx(14.0, rel=1e-6)


def test_avg_factor_includes_eps32():
    # avg_factor 0 -> 14 / eps32 = 1.1744051e8 (not inf).
    out = L1Loss()(PRED, TARGET, avg_factor=0.0)
    assert out.item() == pytest.approx(14 / EPS32, rel=1e-6)
    out = L1Loss()(PRED, TARGET, avg_factor=torch.tensor(0.0))
    assert out.item() == pytest.approx(14 / EPS32, rel=1e-6)


def test_weight_broadcasting():
    # [N] weight (1, 0.5) broadcast over the coordinates: 10·1 + 4·0.5 = 12, / 2 = 6.
    assert L1Loss()(PRED, TARGET, torch.tensor([1.0, 0.5]), avg_factor=2.0).item() == (pytest.approx(6.0, rel=1e-6))
    # Mean without avg_factor: over all 8 elements, 12 / 8.
    assert L1Loss()(PRED, TARGET, torch.tensor([1.0, 0.5])).item() == pytest.approx(1.5)
    # Element weights: only |1 - 0|·1 and |0 - 1|·2 survive -> 3.
    w = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    assert L1Loss()(PRED, TARGET, w, avg_factor=1.0).item() == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(ValueError, match="l1_loss.py"):
        L1Loss()(PRED, TARGET, torch.ones(3))


def test_zero_weights_rule():
    pred = PRED.clone().requires_grad_(True)
    # No weight > 0: (pred·weight).sum(), a 0 connected to pred (loss_weight not applied).
    for loss in (L1Loss(loss_weight=3.0), SmoothL1Loss(beta=0.11)):
        out = loss(pred, TARGET, torch.zeros(2), avg_factor=0.0)
        assert out.item() == 0.0 and out.requires_grad
        (grad,) = torch.autograd.grad(out, pred)
        assert torch.equal(grad, torch.zeros_like(pred))


def test_smooth_l1_beta_011():
    # d = 0.05 < 0.11: 0.5·0.05²/0.11 = 0.00125/0.11 = 0.0113636...
    # d = 0.5 >= 0.11: 0.5 - 0.055 = 0.445.  d = 0: 0.
    pred = torch.tensor([[0.05, -0.5, 0.0, 0.0]])
    target = torch.zeros(1, 4)
    loss = SmoothL1Loss(beta=0.11)
    expected_sum = 0.00125 / 0.11 + 0.445
    assert loss(pred, target, avg_factor=1.0).item() == pytest.approx(expected_sum, rel=1e-6)
    assert loss(pred, target).item() == pytest.approx(expected_sum / 4, rel=1e-6)
    # beta 1 (default): d = 0.5 -> 0.125, d = 2 -> 1.5.
    assert SmoothL1Loss()(torch.tensor([0.5, 2.0]), torch.zeros(2), avg_factor=1.0).item() == (
        pytest.approx(1.625, rel=1e-6)
    )
    with pytest.raises(ValueError, match="l1_loss.py"):
        SmoothL1Loss(beta=0.0)


def test_dtype_empty_and_shape_errors():
    out = L1Loss()(PRED.half(), TARGET.half(), avg_factor=2.0)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(7.0, rel=1e-6)
    assert L1Loss()(PRED.double(), TARGET.double()).dtype == torch.float64
    empty = L1Loss()(torch.zeros(0, 4), torch.zeros(0, 4))
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match="l1_loss.py"):
        L1Loss()(PRED, TARGET[:1])
