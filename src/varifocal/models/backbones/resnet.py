"""ResNet / ResNeXt backbones (optionally with DCNv2) for detection (spec §1.1, §6.3, §8).

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``…``layer4``, blocks with
``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0/.1``) without ``avgpool``/``fc``, so that
``state_dict()`` keys prefixed with ``backbone.`` are the MMDetection checkpoint keys of spec
Appendix A verbatim, and torchvision ImageNet weights load by name. ``style='pytorch'``: the
stride of a downsampling bottleneck sits on its 3×3 conv (conv2); ``style='caffe'`` (FCOS,
zoo_spec §1.2) puts it on the 1×1 conv1, with the same keys and shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from varifocal.models.layers.dcn import ModulatedDeformConv2d

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "load_torchvision_weights",
    "resnet_backbone",
    "TORCHVISION_V1_URLS",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext101_32x4d",
    "resnext101_64x4d",
]

_BN_EPS = 1e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN/ReLU and an identity (or 1×1-conv + BN) shortcut (ResNet-18/34).

    Args:
        inplanes: input channels.
        planes: channels of both convs; the block outputs ``planes`` (expansion 1).
        stride: stride of conv1 (1 or 2).
        downsample: the shortcut module or None for identity.

    forward: x [N, inplanes, H, W] -> [N, planes, ceil(H/stride), ceil(W/stride)].
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = _bn(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, inplanes, H, W] -> relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (grouped, optionally DCNv2, carries the stride), 1×1 expand (×4).

    Args:
        inplanes: input channels.
        planes: the stage's base channels; the block outputs ``4 * planes``.
        stride: stride of conv2 (``style='pytorch'``) or of conv1 (``style='caffe'``).
        downsample: the shortcut module or None for identity.
        groups: cardinality of conv2 (ResNeXt).
        base_width: ResNeXt width per group at planes=64; the inner width is
            ``floor(planes * base_width / 64) * groups``.
        dcn: when True conv2 is a :class:`ModulatedDeformConv2d` (deform_groups 1, no bias),
            keys ``conv2.weight`` + ``conv2.conv_offset.{weight,bias}`` (spec §8.3).
        style: ``'pytorch'`` or ``'caffe'`` (which conv carries the stride).

    forward: x [N, inplanes, H, W] -> [N, 4·planes, ceil(H/stride), ceil(W/stride)].
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dcn: bool = False,
        style: str = "pytorch",
    ) -> None:
        super().__init__()
        width = (planes * base_width // 64) * groups
        conv1_stride, stride = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, width, 1, stride=conv1_stride, bias=False)
        self.bn1 = _bn(width)
        if dcn:
            self.conv2 = ModulatedDeformConv2d(
                width, width, 3, stride=stride, padding=1, groups=groups, deform_groups=1
            )
        else:
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = _bn(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, inplanes, H, W] -> [N, 4·planes, H/stride, W/stride] (1×1, 3×3, 1×1 + shortcut)."""
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


_ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ResNet / ResNeXt detection backbone returning C2..C5 feature maps (spec §1.1, §6.3).

    Args:
        depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
        groups: cardinality of the 3×3 convs (ResNeXt: 32 or 64); Bottleneck only.
        base_width: width per group (ResNeXt: 4); Bottleneck inner width is
            ``floor(planes * base_width / 64) * groups``.
        out_indices: which stages to return, 0..3 = C2..C5 (strides 4, 8, 16, 32).
        frozen_stages: -1 freezes nothing, 0 the stem (conv1 + bn1), k ≥ 1 the stem and
            layer1..layer{k}. Frozen parameters get ``requires_grad=False`` and frozen modules
            stay in eval mode.
        norm_eval: when True every BatchNorm stays in eval mode (running stats neither used
            from the batch nor updated) even after ``train()``; the affine parameters of
            non-frozen stages remain trainable.
        stage_with_dcn: 4 flags; in flagged stages the conv2 (3×3) of every Bottleneck becomes a
            :class:`ModulatedDeformConv2d` (groups as the block, deform_groups 1, stride on it).
        style: ``'pytorch'`` (stride on the 3×3 conv2 of a downsampling bottleneck) or
            ``'caffe'`` (on its 1×1 conv1; MMDetection's caffe-style ResNets, zoo_spec §1.2).
        norm_requires_grad: False freezes the affine parameters of every BatchNorm too
            (``norm_cfg=BN(requires_grad=False)`` of the caffe configs).

    Attributes:
        out_channels: list[int], channels of the returned maps (e.g. [512, 1024, 2048] for
            R-50 with out_indices (1, 2, 3)).
        strides: list[int], their strides in input pixels.

    forward(x): x [N, 3, H, W] (normalised RGB, ImageNet mean/std on 0-255) -> list of
    [N, out_channels[i], ceil(H/stride_i)…] tensors (exactly H/stride for H a multiple of 32).

    Raises:
        ValueError: unknown depth, ResNeXt/DCN options on a BasicBlock depth, bad out_indices,
            frozen_stages, stage_with_dcn or style.
    """

    def __init__(
        self,
        depth: int,
        groups: int = 1,
        base_width: int = 64,
        out_indices: Sequence[int] = (1, 2, 3),
        frozen_stages: int = 1,
        norm_eval: bool = True,
        stage_with_dcn: Sequence[bool] = (False, False, False, False),
        style: str = "pytorch",
        norm_requires_grad: bool = True,
    ) -> None:
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"ResNet: style must be 'pytorch' or 'caffe', got {style!r}")
        if depth not in _ARCH:
            raise ValueError(f"ResNet: depth must be one of {sorted(_ARCH)}, got {depth}")
        block, layers = _ARCH[depth]
        stage_with_dcn = tuple(bool(f) for f in stage_with_dcn)
        if len(stage_with_dcn) != 4:
            raise ValueError(f"ResNet: stage_with_dcn needs 4 flags, got {stage_with_dcn}")
        if block is BasicBlock and (groups != 1 or base_width != 64 or any(stage_with_dcn)):
            raise ValueError(f"ResNet-{depth}: BasicBlock supports only groups=1, base_width=64 and no DCN")
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f"ResNet: out_indices must be a non-empty subset of 0..3, got {out_indices}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"ResNet: frozen_stages must be in -1..4, got {frozen_stages}")
        self.depth = depth
        self.groups = groups
        self.base_width = base_width
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.stage_with_dcn = stage_with_dcn
        self.style = style
        self.norm_requires_grad = norm_requires_grad

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

        inplanes = 64
        stage_channels = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage, inplanes = self._make_stage(block, inplanes, planes, blocks, stride, stage_with_dcn[i])
            self.add_module(f"layer{i + 1}", stage)
            stage_channels.append(inplanes)
        self.out_channels = [stage_channels[i] for i in out_indices]
        self.strides = [4 * 2**i for i in out_indices]

        self.init_weights()
        self.train()  # applies frozen_stages and norm_eval right away

    def _make_stage(
        self,
        block: type[nn.Module],
        inplanes: int,
        planes: int,
        blocks: int,
        stride: int,
        dcn: bool,
    ) -> tuple[nn.Sequential, int]:
        outplanes = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != outplanes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), _bn(outplanes))
        extra = (
            {}
            if block is BasicBlock
            else {"groups": self.groups, "base_width": self.base_width, "dcn": dcn, "style": self.style}
        )
        mods = [block(inplanes, planes, stride, downsample, **extra)]
        for _ in range(1, blocks):
            mods.append(block(outplanes, planes, 1, None, **extra))
        return nn.Sequential(*mods), outplanes

    def init_weights(self) -> None:
        """From-scratch init: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0.

        DCN offset convs are reset to zero afterwards (regular grid, mask 0.5).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, ModulatedDeformConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ModulatedDeformConv2d):
                m.init_offset()

    def _frozen_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.frozen_stages >= 0:
            mods += [self.conv1, self.bn1]
        for i in range(1, self.frozen_stages + 1):
            mods.append(getattr(self, f"layer{i}"))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        if not self.norm_requires_grad:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        """Set train/eval mode, then keep frozen stages (and, with norm_eval, all BN) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, 3, H, W] -> [C_{i+2} for i in out_indices], see the class docstring."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 backbone (BasicBlock, 2-2-2-2); kwargs go to :class:`ResNet`."""
    return ResNet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 backbone (BasicBlock, 3-4-6-3); kwargs go to :class:`ResNet`."""
    return ResNet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 backbone (Bottleneck, 3-4-6-3; spec §1.1); kwargs go to :class:`ResNet`."""
    return ResNet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 backbone (3-4-23-3; spec §6.3); kwargs go to :class:`ResNet`."""
    return ResNet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152 backbone (3-8-36-3); kwargs go to :class:`ResNet`."""
    return ResNet(152, **kwargs)


def resnext101_32x4d(**kwargs) -> ResNet:
    """ResNeXt-101 32x4d backbone (groups 32, base width 4; spec §6.3)."""
    return ResNet(101, groups=32, base_width=4, **kwargs)


def resnext101_64x4d(**kwargs) -> ResNet:
    """ResNeXt-101 64x4d backbone (groups 64, base width 4; spec §6.3)."""
    return ResNet(101, groups=64, base_width=4, **kwargs)


def _read_state_dict(path_or_url: str) -> dict[str, torch.Tensor]:
    src = str(path_or_url)
    if src.startswith(("http://", "https://")):
        obj = torch.hub.load_state_dict_from_url(src, map_location="cpu", progress=False, weights_only=True)
    else:
        if not Path(src).is_file():
            raise FileNotFoundError(f"{src}: no such checkpoint file")
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling / zip errors: report the file in one line
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{src}: not a readable torch checkpoint ({msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{src}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    return obj


def load_torchvision_weights(backbone: ResNet, path_or_url: str) -> list[str]:
    """Load torchvision ImageNet ResNet/ResNeXt weights into ``backbone`` (spec §1.1, §8.4).

    Args:
        backbone: the :class:`ResNet` to fill (its frozen/trainable state is unchanged).
        path_or_url: a local ``.pth`` (read with ``torch.load(weights_only=True)``) or an
            http(s) URL (``torch.hub.load_state_dict_from_url``, cached in the hub dir). A dict
            with a ``state_dict`` entry and ``module.``-prefixed keys are accepted too.

    Loading is non-strict: ``fc.*`` is dropped, keys absent from the file (e.g. DCN
    ``conv_offset``) keep their init, extra keys are ignored.

    Returns:
        the backbone keys that were not in the file (sorted).

    Raises:
        FileNotFoundError: the local file does not exist.
        ValueError: (one line, naming the file) unreadable file, a shape mismatch on a matching
            key, or no key of the file matching the backbone.
    """
    src = str(path_or_url)
    sd = _read_state_dict(src)
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    matched = [k for k in sd if k in own]
    if not matched:
        raise ValueError(
            f"{src}: none of its {len(sd)} keys match the ResNet backbone "
            f"(e.g. {next(iter(sd), '<empty>')!r}); is it a torchvision ResNet?"
        )
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in matched
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if bad:
        raise ValueError(
            f"{src}: {len(bad)} mis-shaped tensors for this ResNet, first: "
            f"{bad[0]} (file vs model); wrong depth or width?"
        )
    result = backbone.load_state_dict({k: sd[k] for k in matched}, strict=False)
    return sorted(result.missing_keys)


#: torchvision's ImageNet V1 ResNet weights (vfnet_spec §1.1 and pitfall 21: V1, not V2), used
#: for ``pretrained_backbone=True``. Downloaded by torch.hub on first use (needs network access).
TORCHVISION_V1_URLS = {
    (18, 1): "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    (34, 1): "https://download.pytorch.org/models/resnet34-b627a593.pth",
    (50, 1): "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    (101, 1): "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def resnet_backbone(
    depth: int,
    groups: int = 1,
    base_width: int = 64,
    dcn: bool = False,
    pretrained: str | bool | None = None,
    style: str = "pytorch",
) -> ResNet:
    """The detection trunk of every ResNet zoo model: C3-C5 (out_indices 1-3), stem and
    layer1 frozen, BN in eval mode (zoo_spec §1.2); DCNv2 in the 3×3 convs of stages 2-4 with
    ``dcn``. ``style='caffe'`` also freezes every BN's affine parameters (FCOS).

    Args:
        depth, groups, base_width: see :class:`ResNet`.
        dcn: DCNv2 in stages 2-4 (``stage_with_dcn=(False, True, True, True)``).
        pretrained: path or URL of ImageNet weights in torchvision's key layout, or ``True``
            for torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        style: ``'pytorch'`` or ``'caffe'``.

    Raises:
        ValueError: ``pretrained=True`` for a backbone without torchvision weights.
    """
    backbone = ResNet(
        depth,
        groups=groups,
        base_width=base_width,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        stage_with_dcn=(False, dcn, dcn, dcn),
        style=style,
        norm_requires_grad=style != "caffe",
    )
    if pretrained:
        if pretrained is True:
            if (depth, groups) not in TORCHVISION_V1_URLS:
                raise ValueError(
                    f"no torchvision ImageNet weights exist for this backbone (depth {depth}, groups {groups}); "
                    "pass pretrained_backbone=<path or URL of a checkpoint>"
                )
            pretrained = TORCHVISION_V1_URLS[(depth, groups)]
        load_torchvision_weights(backbone, pretrained)
    return backbone
