"""BatchNorm building blocks of RefineDet's ResNet-101 variant (``refinedet_spec.md`` §2.4, §12).

- :class:`ProjectionBottleneck`: res6 (in → 128 → 128 → 512, stride 2) and the inter blocks
  before every ARM/ODM head (in → 256 → 256 → 1024, stride 1).
- :func:`conv_bn`: conv (no bias) → BN → optional ReLU, for the BN TCB convs.
- :func:`deconv_bn`: the BN TCB's 2× deconv (ConvTranspose2d k2 s2 p0, no bias) → BN, no ReLU.

Every conv here is initialised N(0, 0.01²) with no bias, every BN γ = 1, β = 0 (§12). Caffe's
BatchNorm + Scale pair is one affine ``nn.BatchNorm2d`` (eps 1e-5, Caffe's default); when
converting Caffe weights divide its mean/var blobs by the scale-factor blob (§15.3).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

__all__ = ["ProjectionBottleneck", "conv_bn", "deconv_bn", "normal_init_"]

_BN_EPS = 1e-5


def normal_init_(module: nn.Module, std: float = 0.01) -> nn.Module:
    """Every conv / deconv weight in ``module`` ~ N(0, std²), conv bias 0; every BatchNorm γ = 1,
    β = 0 (§12, ResNet variant). Returns ``module`` (initialised in place)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, relu: bool = True
) -> nn.Sequential:
    """conv (k×k, ``padding = k // 2``, no bias) → BN (affine) → ReLU if ``relu`` (§2.4 BN TCBs).

    Keys: ``conv.weight``, ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``.
    Shapes: [N, C_in, H, W] → [N, C_out, ceil(H/stride), ceil(W/stride)] (odd k).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        bn=nn.BatchNorm2d(out_channels, eps=_BN_EPS),
    )
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return normal_init_(nn.Sequential(layers))


def deconv_bn(channels: int = 256) -> nn.Sequential:
    """ConvTranspose2d(channels → channels, kernel 2, stride 2, pad 0, no bias) → BN, no ReLU
    (§5 step 3, ResNet form of §2.4). Output exactly 2H × 2W.

    Keys: ``deconv.weight`` ([C_in, C_out, 2, 2], as Caffe's), ``bn.*``.
    Shapes: [N, C, H, W] → [N, C, 2H, 2W].
    """
    return normal_init_(
        nn.Sequential(
            OrderedDict(
                deconv=nn.ConvTranspose2d(channels, channels, 2, stride=2, padding=0, bias=False),
                bn=nn.BatchNorm2d(channels, eps=_BN_EPS),
            )
        )
    )


class ProjectionBottleneck(nn.Module):
    """Caffe-style bottleneck with a projection shortcut (§2.4): the stride sits on the first 1×1.

    ``y = ReLU(bn3(conv3(ReLU(bn2(conv2(ReLU(bn1(conv1(x)))))))) + downsample(x))`` with
    conv1 1×1/stride → ``mid``, conv2 3×3 pad 1 → ``mid``, conv3 1×1 → ``out``, and
    ``downsample`` = 1×1/stride conv → ``out`` + BN. Convs have no bias, N(0, 0.01²); BN γ 1, β 0.

    Keys (torchvision's names; Caffe's in brackets): ``conv1`` (branch2a), ``bn1`` (bn/scale2a),
    ``conv2`` (branch2b), ``bn2``, ``conv3`` (branch2c), ``bn3``, ``downsample.0`` (branch1),
    ``downsample.1`` (bn/scale1).

    Args:
        in_channels: C_in.
        mid_channels: width of the two inner convs (128 for res6, 256 for the inter blocks).
        out_channels: C_out (512 for res6, 1024 for the inter blocks).
        stride: of conv1 and of the shortcut (2 for res6, 1 for the inter blocks).

    forward: x [N, C_in, H, W] → [N, C_out, ceil(H/stride), ceil(W/stride)]
    (res6 on [1, 2048, 10, 10] → [1, 512, 5, 5]).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels, eps=_BN_EPS)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels, eps=_BN_EPS)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
        )
        self.relu = nn.ReLU(inplace=True)
        normal_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        identity = self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)
