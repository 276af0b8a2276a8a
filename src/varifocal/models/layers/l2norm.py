"""Per-position L2 normalisation with a learned per-channel scale (SSD/RefineDet's ``Normalize``
layer with ``across_spatial=False, channel_shared=False``; ``refinedet_spec.md`` §2.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["L2Norm"]


class L2Norm(nn.Module):
    """``y[n,c,i,j] = s_c · x[n,c,i,j] / sqrt(Σ_c' x[n,c',i,j]² + eps)`` (§2.2).

    ``eps`` (1e-10, Caffe's) sits inside the root, so an all-zero position gives 0 (not NaN) and a
    finite gradient (``s_c / sqrt(eps)``). The norm and the product are computed in float32 whatever
    the input dtype (a bf16/fp16 sum of 512 squares loses too much) and the result is cast back to
    the input's dtype; any memory format (channels-last included) works.

    Args:
        channels: C, the number of channels (512 for VGG's conv4_3 / conv5_3).
        init_scale: initial value of every ``s_c`` (RefineDet: 10 for conv4_3, 8 for conv5_3;
            SSD used 20).
        eps: added to the sum of squares inside the square root.

    Attributes:
        weight: the learned scales ``s``, shape [C] (key ``weight``; default lr and weight decay).

    forward: x [N, C, H, W] → [N, C, H, W], same dtype as ``x``.

    Raises:
        ValueError: ``channels`` < 1; in forward, an input that is not 4-D with C channels.
    """

    def __init__(self, channels: int, init_scale: float, eps: float = 1e-10) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ValueError(f"l2norm.py: channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.init_scale = float(init_scale)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(self.channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Set every scale back to ``init_scale``."""
        nn.init.constant_(self.weight, self.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"l2norm.py: expected an input [N, {self.channels}, H, W], got {list(x.shape)}")
        x32 = x.float()
        norm = torch.sqrt(x32.pow(2).sum(dim=1, keepdim=True) + self.eps)
        y = x32 / norm * self.weight.float().view(1, -1, 1, 1)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, init_scale={self.init_scale}, eps={self.eps}"
