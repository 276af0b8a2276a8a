"""Feature Pyramid Network producing P3-P7 (spec §1.2, §8.2, §10 item 16; zoo_spec §1.3).

State-dict keys: ``lateral_convs.{i}.conv.{weight,bias}`` (1×1) and
``fpn_convs.{i}.conv.{weight,bias}`` (3×3; indices ≥ len(in_channels) are the extra convs), i.e.
the ``neck.*`` keys of the official VFNet checkpoint once prefixed with ``neck.``. With a
GroupNorm (RepPoints' ``norm_cfg=GN(32)``, zoo_spec §1.3 RepPoints row) every conv loses its
bias and gains ``….gn.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FPN"]

_EXTRA_MODES = ("on_input", "on_lateral", "on_output", "none")


class _ConvHolder(nn.Module):
    """Holds one ``nn.Conv2d`` as ``.conv`` so the keys read ``….conv.weight`` (spec §8.2); with
    ``num_groups`` the conv has no bias and is followed by ``.gn`` (GroupNorm, eps 1e-5, no
    activation: MMDetection's FPN ConvModule with ``act_cfg=None``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, num_groups: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=num_groups is None)
        self.gn = nn.GroupNorm(num_groups, cout, eps=1e-5) if num_groups is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.gn(x) if self.gn is not None else x


class FPN(nn.Module):
    """FPN with lateral 1×1 convs, nearest top-down fusion, 3×3 outputs and extra levels.

    Spec §1.2. Inputs are the backbone maps already selected (e.g. C3, C4, C5).

    Args:
        in_channels: channels of each input level, finest first (R-50: [512, 1024, 2048]).
        out_channels: channels of every output level (256 for the zoo models).
        num_outs: number of output levels (≥ len(in_channels)); the extra ones are strided.
        add_extra_convs: source of the extra levels:
            ``'on_output'`` (VFNet; mmdet 2.x ``add_extra_convs=True``): first extra =
            conv3×3/2(P_last output); ``'on_input'``: conv3×3/2(last input, e.g. C5);
            ``'on_lateral'``: conv3×3/2(last lateral); ``'none'``: every extra level is
            ``max_pool2d(prev, kernel 1, stride 2)``. ``True``/``False`` are accepted as
            ``'on_output'``/``'none'``.
        relu_before_extra_convs: apply ReLU to the input of the 2nd, 3rd, … extra conv
            (P7 = conv(ReLU(P6))). The first extra conv never gets a ReLU.
        norm_groups: ``None`` (default): plain convs with bias. An int G: every lateral, output
            and extra conv is conv (no bias) → GroupNorm(G) (RepPoints GN, zoo_spec §1.3, §6.7);
            ``out_channels`` must be divisible by G.

    Layers: ``lateral_convs[i]`` 1×1 in_channels[i]→out (bias); ``fpn_convs[i]`` 3×3/1 out→out
    (bias) for i < len(in_channels), then 3×3/2 extra convs (in = in_channels[-1] for the first
    one with 'on_input', else out). No norm (unless ``norm_groups``), no activation.
    Xavier-uniform weights, zero bias.

    forward(inputs): list of [N, in_channels[i], H_i, W_i] -> tuple of ``num_outs`` tensors
    [N, out_channels, H'_j, W'_j]; the extra sizes are ceil(prev / 2) (for an 800×1216 input
    with strides 8..32: 100×152, 50×76, 25×38, 13×19, 7×10).

    Raises:
        ValueError: bad add_extra_convs, num_outs < len(in_channels), empty in_channels,
            ``out_channels`` not divisible by ``norm_groups``, or a forward with the wrong number
            of inputs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        add_extra_convs: str | bool = "on_output",
        relu_before_extra_convs: bool = True,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        if add_extra_convs is True:
            add_extra_convs = "on_output"
        elif add_extra_convs is False:
            add_extra_convs = "none"
        if add_extra_convs not in _EXTRA_MODES:
            raise ValueError(f"FPN: add_extra_convs must be one of {_EXTRA_MODES}, got {add_extra_convs!r}")
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ValueError("FPN: in_channels is empty")
        if num_outs < len(in_channels):
            raise ValueError(f"FPN: num_outs={num_outs} < number of inputs {len(in_channels)}")
        if norm_groups is not None and (int(norm_groups) < 1 or out_channels % int(norm_groups)):
            raise ValueError(f"FPN: out_channels={out_channels} is not divisible by norm_groups={norm_groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.norm_groups = None if norm_groups is None else int(norm_groups)

        n, g = len(in_channels), self.norm_groups
        self.lateral_convs = nn.ModuleList(_ConvHolder(c, out_channels, 1, num_groups=g) for c in in_channels)
        convs = [_ConvHolder(out_channels, out_channels, 3, num_groups=g) for _ in range(n)]
        if add_extra_convs != "none":
            for j in range(num_outs - n):
                cin = in_channels[-1] if (j == 0 and add_extra_convs == "on_input") else out_channels
                convs.append(_ConvHolder(cin, out_channels, 3, stride=2, num_groups=g))
        self.fpn_convs = nn.ModuleList(convs)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform (gain 1) on every conv weight, bias 0 (spec §1.2); GroupNorm weight 1,
        bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Build the pyramid; see the class docstring for shapes."""
        n = len(self.in_channels)
        if len(inputs) != n:
            raise ValueError(f"FPN: expected {n} input maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n)]
        if self.num_outs > n:
            if self.add_extra_convs == "none":
                for _ in range(self.num_outs - n):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == "on_input":
                    src = inputs[-1]
                elif self.add_extra_convs == "on_lateral":
                    src = laterals[-1]
                else:
                    src = outs[-1]
                outs.append(self.fpn_convs[n](src))
                for i in range(n + 1, self.num_outs):
                    prev = outs[-1]
                    if self.relu_before_extra_convs:
                        prev = F.relu(prev)
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)
