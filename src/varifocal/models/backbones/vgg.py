"""SSD's atrous "fc-reduced" VGG-16 body, RefineDet's VGG backbone (``refinedet_spec.md`` §2.1, §12,
§15.3 item 1), and loading torchvision's ImageNet ``vgg16`` weights into it."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn

from ...checkpoint import CheckpointError, read_checkpoint
from ..layers.init import caffe_xavier_

__all__ = ["VGG16Atrous", "load_vgg16_imagenet", "CAFFE_LAYER_NAMES", "VGG16_CONV_INDICES"]

#: Channels of conv1_1 … conv5_3 (§2.1).
_CONV_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
_BLOCK_SIZES = (2, 2, 3, 3, 3)

#: Indices in ``features`` of conv1_1 … conv5_3: torchvision's ``vgg16().features`` indices.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

#: Caffe (SSD ``VGGNetBody``) layer name → our module name, for converting Caffe weights.
CAFFE_LAYER_NAMES = {
    **{
        f"conv{b + 1}_{j + 1}": f"features.{VGG16_CONV_INDICES[sum(_BLOCK_SIZES[:b]) + j]}"
        for b, n in enumerate(_BLOCK_SIZES)
        for j in range(n)
    },
    "fc6": "fc6",
    "fc7": "fc7",
}

_CONV4_3_RELU = 22  # index in ``features`` of the ReLU after conv4_3 (source, stride 8)
_CONV5_3_RELU = 29  # ... after conv5_3 (source, stride 16); 30 is pool5


class VGG16Atrous(nn.Module):
    """The SSD "fc-reduced" VGG-16 body with RefineDet's pool5 (§2.1).

    conv1_1 … conv5_3 (3×3, stride 1, pad 1, bias, ReLU) with a 2×2/2 max-pool after each of the
    five blocks (pool5 is the ordinary 2×2/2 pool, **not** SSD300's 3×3/1, so fc7 is at stride 32),
    then fc6 = 3×3 conv, dilation 3, pad 3, 512 → 1024 + ReLU and fc7 = 1×1 conv 1024 → 1024 + ReLU.
    No dropout, no L2Norm (RefineDet's neck applies L2Norm to conv4_3 and conv5_3, §2.2).

    Module names / state-dict keys: ``features.{i}.{weight,bias}`` for the 13 convs, with
    torchvision's ``vgg16().features`` indices ``i`` in :data:`VGG16_CONV_INDICES`
    (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 = conv1_1 … conv5_3; the ReLUs and pools sit at
    the other indices 0…30 exactly as in torchvision, so ImageNet conv weights load by name), then
    ``fc6.{weight,bias}`` [1024, 512, 3, 3] and ``fc7.{weight,bias}`` [1024, 1024, 1, 1] (Caffe's
    names; :data:`CAFFE_LAYER_NAMES` maps every Caffe layer name to ours).

    Init (when no weights are loaded): Caffe "xavier" (U(±sqrt(3/fan_in))), bias 0, on all 15
    convs (:func:`caffe_xavier_`, §2.3, §12). The reference starts from ImageNet weights instead:
    see :func:`load_vgg16_imagenet`.

    Args:
        ceil_mode: round pooled sizes up like Caffe (§2.1 [inferred from Caffe semantics]); only
            matters for inputs that are not multiples of 32 (330 → conv4_3 42×42, fc7 11×11).

    Attributes:
        out_channels: ``(512, 512, 1024)``.
        strides: ``(8, 16, 32)``.

    forward: x [N, 3, H, W] → ``[conv4_3 [N, 512, H/8, W/8], conv5_3 [N, 512, H/16, W/16],
    fc7 [N, 1024, H/32, W/32]]`` (sizes rounded up per pool with ``ceil_mode``), all post-ReLU;
    320 → 40/20/10, 512 → 64/32/16.
    """

    out_channels = (512, 512, 1024)
    strides = (8, 16, 32)

    def __init__(self, ceil_mode: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch, k = 3, 0
        for n in _BLOCK_SIZES:
            for _ in range(n):
                out_ch = _CONV_CHANNELS[k]
                layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch, k = out_ch, k + 1
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=3, dilation=3)
        self.relu6 = nn.ReLU(inplace=True)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.ceil_mode = bool(ceil_mode)
        caffe_xavier_(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (_CONV4_3_RELU, _CONV5_3_RELU):
                feats.append(x)
        x = self.relu7(self.fc7(self.relu6(self.fc6(x))))
        feats.append(x)
        return feats


def _reduce_fc(classifier: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's fc6/fc7 → SSD's fc-reduced convs: every 4th output (and fc7 input) unit, and
    taps 0, 3, 6 of fc6's 7×7 window (used with dilation 3)."""
    w6 = classifier["classifier.0.weight"].view(4096, 512, 7, 7)
    return {
        "fc6.weight": w6[::4][:, :, ::3, ::3].contiguous(),
        "fc6.bias": classifier["classifier.0.bias"][::4].contiguous(),
        "fc7.weight": classifier["classifier.3.weight"][::4, ::4].reshape(1024, 1024, 1, 1).contiguous(),
        "fc7.bias": classifier["classifier.3.bias"][::4].contiguous(),
    }


def load_vgg16_imagenet(backbone: VGG16Atrous, path: str | os.PathLike) -> None:
    """Fill ``backbone`` from a local torchvision ``vgg16`` ImageNet state-dict file (e.g.
    ``vgg16-397923af.pth``), SSD-style (§2.1, §12).

    - conv1_1 … conv5_3: copied by name (``features.{i}.*``, same indices as torchvision).
    - fc6: ``classifier.0.weight`` [4096, 25088] viewed as [4096, 512, 7, 7] (torchvision flattens
      pool5's [512, 7, 7] in C, H, W order), every 4th output channel and spatial taps 0, 3, 6 →
      [1024, 512, 3, 3], used with dilation 3 (the 7×7 window's taps 3 apart); bias every 4th.
    - fc7: ``classifier.3.weight`` [4096, 4096], every 4th row and column → [1024, 1024, 1, 1];
      bias every 4th. ``classifier.6`` (the 1000-way classifier) is dropped.

    The spec only says that SSD's "VGG_ILSVRC_16_layers_fc_reduced" is the ImageNet fc layers
    "subsampled" into these shapes; the exact indices (every 4th unit, taps 0/3/6) are
    [inferred]: taps 0/3/6 are the ones 3 apart that span the 7×7 window, as dilation 3 reads them;
    "every 4th unit" is the usual decimation, not confirmed against the Caffe model.
    A file that already holds VGG16Atrous keys (``features.*``, ``fc6.*``, ``fc7.*``, e.g.
    converted Caffe fc-reduced weights) loads as it is. A ``{'state_dict': ...}`` wrapper and
    ``module.`` prefixes are accepted (:func:`varifocal.checkpoint.read_checkpoint`).

    Note: torchvision's weights expect RGB in [0, 1] normalised by the ImageNet mean/std, not the
    Caffe model's BGR 0–255 minus (104, 117, 123) of §1; the detector's preprocessing must match
    the weights it starts from.

    Args:
        backbone: the :class:`VGG16Atrous` to fill in place (its dtype/device are kept).
        path: the file, ``str`` or ``PathLike`` (as given by a builder's ``pretrained_backbone``);
            read with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError (a ``ValueError``): one line naming the file, if ``path`` is not a path,
            the file is missing, unreadable or corrupt, holds Python objects beyond tensors
            (unsafe pickle, refused), or lacks / mis-shapes one of the 13 conv or 2 fc layers.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(
            f"vgg.py: the VGG-16 weights must be given as a local file path (e.g. vgg16-397923af.pth), "
            f"got {path!r}; varifocal does not download them"
        )
    path = Path(path)
    sd = read_checkpoint(path, check_model_kwargs=False)["state_dict"]
    own = backbone.state_dict()
    conv_keys = [k for k in own if k.startswith("features.")]
    if "classifier.0.weight" in sd or "fc6.weight" not in sd:
        kind = "torchvision vgg16"
        expected = {k: tuple(own[k].shape) for k in conv_keys}
        expected.update(
            {
                "classifier.0.weight": (4096, 512 * 7 * 7),
                "classifier.0.bias": (4096,),
                "classifier.3.weight": (4096, 4096),
                "classifier.3.bias": (4096,),
            }
        )
    else:
        kind = "VGG16Atrous"
        expected = {k: tuple(v.shape) for k, v in own.items()}
    found = {k: tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for k, v in sd.items() if k in expected}
    problems = [f"{k} {found[k]} vs {shape}" for k, shape in expected.items() if k in found and found[k] != shape]
    problems += [f"missing {k}" for k in expected if k not in sd]
    if problems:
        hint = " (it has BatchNorm keys: a vgg16_bn file?)" if any("running_mean" in k for k in sd) else ""
        raise CheckpointError(
            f"{path}: does not fit a {kind} state dict for VGG16Atrous: {len(problems)} missing or mis-shaped "
            f"keys, first: {problems[0]} (file vs expected){hint}; expected torchvision's vgg16 "
            "(features.N.*, classifier.0/3.*) or VGG16Atrous keys (features.N.*, fc6.*, fc7.*)"
        )
    new = {k: sd[k] for k in conv_keys}
    if kind == "VGG16Atrous":
        new.update({k: sd[k] for k in own if k.startswith(("fc6.", "fc7."))})
    else:
        new.update(_reduce_fc(sd))
    backbone.load_state_dict(new, strict=True)
