"""Initialisation of the dense heads trained from scratch (zoo_spec §1.16, vfnet_spec §2.4).
Loading a checkpoint overwrites all of it."""

from __future__ import annotations

import math

from torch import nn

from .conv_module import Scale

__all__ = ["bias_init_with_prob", "caffe_xavier_", "init_dense_head"]


def bias_init_with_prob(prior_prob: float) -> float:
    """Classifier bias whose sigmoid is ``prior_prob``: ``−log((1 − π)/π)`` (−4.59512 for π = 0.01,
    the Focal Loss paper's prior).

    Raises:
        ValueError: ``prior_prob`` outside (0, 1).
    """
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
    return -math.log((1.0 - prior_prob) / prior_prob)


def init_dense_head(head: nn.Module, classifier: nn.Conv2d, prior_prob: float = 0.01) -> None:
    """MMDetection 3.x dense-head init: every ``nn.Conv2d`` weight ~ N(0, 0.01²) with bias 0,
    GroupNorm weight 1 / bias 0, ``Scale`` 1, then ``classifier.bias`` =
    :func:`bias_init_with_prob` (``prior_prob``)."""
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Scale):
            nn.init.constant_(module.scale, 1.0)
    nn.init.constant_(classifier.bias, bias_init_with_prob(prior_prob))


def caffe_xavier_(module: nn.Module) -> nn.Module:
    """Caffe's ``"xavier"`` filler on every ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.Linear``
    in ``module`` (itself included): weight ~ U(−b, b) with ``b = sqrt(3 / fan_in)``, bias 0
    (``refinedet_spec.md`` §2.3, §12: conv6_1/6_2, the VGG TCBs and deconvs, every ARM/ODM
    prediction conv, and VGG-16 when no ImageNet weights are loaded).

    ``fan_in`` is Caffe's ``count / shape[0]`` of the weight blob: ``C_in/groups · kh · kw`` for a
    conv ``[C_out, C_in/g, kh, kw]``; for a deconv, whose blob is ``[C_in, C_out/g, kh, kw]`` in
    both Caffe and PyTorch, it is ``C_out/g · kh · kw``; ``in_features`` for a linear layer. This
    equals MMCV's ``caffe2_xavier_init`` (Kaiming-uniform, a = 1, fan-in).

    Returns:
        ``module`` (initialised in place).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
