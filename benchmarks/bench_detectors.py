"""CPU speed and memory of our detectors side by side with torchvision's FCOS and RetinaNet.

Everything is timed in ONE process and ONE run, on the same inputs and with the same intra-op
thread count, so that machine noise mostly cancels in the ratios. Every timed case runs once
per round, round-robin (the starting case rotates each round), so a change of machine load
hits all cases alike. After ``--warmup`` untimed rounds, ``--repeat`` timed rounds follow; the
report gives the median of those N runs (and N). ``--models`` picks a subset (default all).

Models (random weights, ``num_classes=80`` for all). Ours, each timed as
``model.predict(batch, metas)`` (preprocessed tensor in, detections out: backbone, FPN, head,
post-processing with NMS) and trained with ``model.loss(batch, metas, gt_bboxes, gt_labels)``:

* ``vfnet_r50``: ``varifocal.build_model('vfnet_r50_fpn', num_classes=80,
  star_conv_impl=--star-impl)`` (issue 4).
* ``retinanet_r50``: ``varifocal.build_model('retinanet_r50_fpn', num_classes=80)``
  (MMDetection's ``retinanet_r50_fpn_1x_coco``).
* ``fcos_r50``: ``varifocal.models.detectors.fcos.fcos(depth=50, style='pytorch',
  num_classes=80)``. Not the zoo's ``fcos_r50_caffe_fpn_gn_head``: its caffe-style trunk only
  moves each first bottleneck's stride from the 3×3 conv to the 1×1 conv1 (and freezes the BN
  affines), so the pytorch-style trunk is the same ResNet-50 as torchvision's and the FCOS
  comparison is like for like. FPN, head and post-processing are the zoo model's.
* ``atss_r50``: ``varifocal.build_model('atss_r50_fpn', num_classes=80)``; torchvision has no
  ATSS, it is compared with torchvision's FCOS (same anchor-free head layout, one anchor per
  location).

Torchvision's:

* ``tv_fcos_r50``: ``torchvision.models.detection.fcos_resnet50_fpn(weights=None,
  weights_backbone=None, num_classes=80)``. The baseline (``BASELINE``) of every ratio column.
* ``tv_retinanet_r50``: ``retinanet_resnet50_fpn(weights=None, weights_backbone=None,
  num_classes=80)``. It takes P6 from P5 (``LastLevelP6P7(256, 256)``: a 3×3/2 conv with 256
  input channels) where ours, like MMDetection, takes it from C5 (``add_extra_convs='on_input'``:
  2048 input channels), so our RetinaNet has 8× the FLOPs in that one conv: +2.25 GFLOPs at
  1333×800 (2.58 instead of 0.32 on the 13×21 P6 map; under 0.5 % of the model, the GFLOPs
  column shows it). Both take P7 from P6 (torchvision with a ReLU in between, ours without).
  FCOS and ATSS (ours and torchvision's) all take P6 from the P5 output.

Inputs. A size ``WxH`` (e.g. ``1333x800``) is an image of H rows and W columns, zero-padded on
the right/bottom to multiples of 32, as our preprocessor pads: 1333x800 → a ``[1, 3, 800, 1344]``
batch with ``img_shape (800, 1333)``; 640x640 → ``[1, 3, 640, 640]``. The image part is N(0, 1)
noise (an already normalised image), the padding is 0.

Same input for torchvision. ``GeneralizedRCNNTransform`` normally normalises, resizes (even at
scale factor 1 it calls ``interpolate``) and pads. Here ``model.transform.normalize`` and
``model.transform.resize`` are replaced by identities (instance attributes shadowing the
methods), so the transform only batches/pads. The torchvision model gets the unpadded
``[3, H, W]`` views of our batch and pads them itself to the same multiple of 32. Before timing,
a forward pre-hook on ``model.backbone`` of every model checks that the tensor reaching the
backbone is bit-for-bit our batch (same shape, same values), in inference and in training.

Backbone set-up of the torchvision models (``--tv-bn``). With ``weights_backbone=None`` the
torchvision builders switch to trainable ``nn.BatchNorm2d`` and train all 5 backbone stages,
which is not how anyone trains them (and not like VFNet, whose ResNet keeps BN in eval mode and
freezes the stem and layer1). ``--tv-bn frozen`` (default) converts them to what the builders
give with ImageNet weights: ``FrozenBatchNorm2d`` everywhere, and only layer2-4 trainable
(``trainable_backbone_layers=3``). ``--tv-bn batchnorm`` keeps the builders' output as is.

What is measured:

1. Inference (eval mode, ``torch.no_grad()``), batch 1, every size in ``--sizes``.
2. One training step (``zero_grad``, forward with losses, ``backward``, ``SGD.step``; lr 1e-4,
   momentum 0.9, wd 1e-4), batch 2 at ``--train-size``, 5 ground-truth boxes per image
   (torchvision gets ``{'boxes', 'labels'}`` dicts with labels 1..79, ours ``model.loss``
   with the same labels − 1).
3. A breakdown of VFNet inference per size (with ``vfnet_r50`` in ``--models``), from parts
   timed separately on the same input: backbone (``model.backbone(batch)``), FPN (``model.neck``
   on the backbone outputs), head (``model.bbox_head`` on the FPN outputs), the two star
   deformable convs (their inputs at every level are captured with forward pre-hooks during one
   head forward; the modules are then called on them) and post-processing
   (``bbox_head.predict`` on the head outputs). Only VFNet has star convs: their FLOP stubs
   (item 6) and this breakdown are VFNet's alone.
   head towers = median(head) − median(star convs): the cls/reg ConvModule stacks,
   ``vfnet_reg_conv`` and the output convs (``vfnet_reg``, ``vfnet_reg_refine``, ``vfnet_cls``).
4. The star deformable conv against a plain ``nn.Conv2d(256, 256, 3, padding=1, bias=False)``
   at P3 size (``--star-shape``, default [1, 256, 100, 152]; distances U(1, 12) cells as in
   ``bench_star_conv.py``), forward (no_grad) and forward+backward (grads of x, weight and
   distances), ``impl='fast'`` and ``impl='torchvision'``. Acceptance 1: fast fwd ≤ 1.5× conv.
   These cases are cheap, so they run in rounds of their own after the models (same process,
   same round-robin), ``--star-repeat`` timed rounds (default 15) after max(``--warmup``, 3).
5. The machine's compute limit, in the same rounds: a float32 ``torch.mm`` of two
   ``--peak-size``² matrices (2·n³ FLOPs), median FLOP/s.
6. FLOPs of every model and mode, counted once (untimed) with
   ``torch.utils.flop_counter.FlopCounterMode`` (convs, matmuls; elementwise ops, norms, NMS not
   counted). FlopCounterMode cannot see inside deform_conv2d, and would count the fast star
   conv's sparse ``addmm`` as a dense one, so during counting both star convs are replaced by
   shape-preserving stubs and added analytically: 2·C_in·C_out·9·H·W·N per star conv per level
   (×3 in training: forward, grad of the input, grad of the weight). % of peak = (FLOPs / median
   time) / measured matmul FLOP/s.
7. Peak memory (``--skip-memory`` to skip), measured first, before the parent builds any
   model: one fresh ``multiprocessing`` 'spawn' child per (model, mode, size). It sets the
   thread count, makes the inputs, reads its peak RSS (baseline: torch imported, inputs made,
   no model), builds the model, runs the inference or training step twice (the second training
   step has the SGD momentum buffers), and reports peak RSS − baseline in MiB (weights, grads,
   optimizer state, activations, allocator slack). Peak RSS is ``VmHWM`` of
   ``/proc/self/status``; ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is recorded too (and
   used where /proc is missing), but Linux carries ru_maxrss over fork + exec: a spawned child
   starts with its parent's peak RSS as its own, so once the parent has grown past the child's
   true peak, the ru_maxrss difference reads 0. Running the children before the parent grows
   keeps both numbers meaningful; the table shows the VmHWM one.

Caveats: the weights are random. All classifiers start at the prior probability 0.01, below every
score threshold, so post-processing sees almost no candidates; ``--dense-scores`` sets the
classifier biases to 0 (scores 0.5) to time a busy post-processing instead (ours:
``bbox_head.vfnet_cls`` / ``retina_cls`` / ``conv_cls`` / ``atss_cls``; torchvision:
``head.classification_head.cls_logits``). On a CPU shared with other busy processes every
number moves; the load average is printed and recorded.

    .venv/bin/python benchmarks/bench_detectors.py --json benchmarks/results_cpu.json
    .venv/bin/python benchmarks/bench_detectors.py --sizes 320x320 --repeat 1 --warmup 0
    .venv/bin/python benchmarks/bench_detectors.py --models fcos_r50,tv_fcos_r50 --skip-train
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import fcos_resnet50_fpn, retinanet_resnet50_fpn
from torchvision.ops.misc import FrozenBatchNorm2d

import varifocal
from varifocal.models.detectors.fcos import fcos as build_fcos
from varifocal.models.layers.star_deform_conv import star_deform_conv2d

NUM_CLASSES = 80
#: Our detectors (``model.predict`` / ``model.loss`` on the preprocessed batch), with the name of
#: their classifier conv in ``bbox_head`` (``--dense-scores`` zeroes its bias).
OURS = {"vfnet_r50": "vfnet_cls", "retinanet_r50": "retina_cls", "fcos_r50": "conv_cls", "atss_r50": "atss_cls"}
#: torchvision's detectors (``model(images)`` / ``model(images, targets)``).
TORCHVISION = {"tv_fcos_r50": fcos_resnet50_fpn, "tv_retinanet_r50": retinanet_resnet50_fpn}
MODELS = ("vfnet_r50", "retinanet_r50", "fcos_r50", "atss_r50", "tv_fcos_r50", "tv_retinanet_r50")
BASELINE = "tv_fcos_r50"
#: Acceptance ratios: (key stem, our model, torchvision's model it is compared with).
PAIRS = (
    ("vfnet_over_fcos", "vfnet_r50", "tv_fcos_r50"),
    ("retinanet_over_tv_retinanet", "retinanet_r50", "tv_retinanet_r50"),
    ("fcos_over_tv_fcos", "fcos_r50", "tv_fcos_r50"),
    ("atss_over_tv_fcos", "atss_r50", "tv_fcos_r50"),
)
TRAIN_BATCH = 2
# Warm-up rounds of the star conv section at least: the fast path picks its sparse thread count
# from a few measured calls.
STAR_WARMUP = 3
GT_PER_IMAGE = 5
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    """'1333x800' → (w, h) = (1333, 800)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH like 1333x800, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [_size(v) for v in s.split(",") if v],
        default=[(1333, 800), (640, 640)],
        help="inference sizes WxH, comma separated (default 1333x800,640x640)",
    )
    p.add_argument(
        "--train-size",
        type=_size,
        default=(640, 640),
        help=f"training step size WxH, batch {TRAIN_BATCH} (default 640x640)",
    )
    p.add_argument(
        "--models",
        type=lambda s: [v.strip() for v in s.split(",") if v.strip()],
        default=list(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default all; ratios need {BASELINE})",
    )
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (median of N)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument(
        "--star-repeat",
        type=int,
        default=15,
        help="timed rounds of the star conv vs conv3x3 section, which runs in its own "
        "rounds after the models (cheap ops: more runs, less noise; default 15)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's own count)")
    p.add_argument("--skip-memory", action="store_true", help="no peak-memory child processes")
    p.add_argument("--skip-train", action="store_true", help="no training steps")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument(
        "--star-impl",
        choices=["auto", "fast", "torchvision"],
        default="auto",
        help="VFNet's star_conv_impl (default auto = fast on CPU, the library default)",
    )
    p.add_argument(
        "--star-shape",
        type=int,
        nargs=4,
        default=[1, 256, 100, 152],
        metavar=("N", "C", "H", "W"),
        help="star conv vs conv input (P3 size)",
    )
    p.add_argument(
        "--peak-size", type=int, default=4096, help="n of the n×n @ n×n float32 matmul measuring the FLOP/s limit"
    )
    p.add_argument(
        "--tv-bn",
        choices=["frozen", "batchnorm"],
        default="frozen",
        help="torchvision backbones as with ImageNet weights (FrozenBatchNorm2d, "
        "layer2-4 trainable; default) or as built with weights_backbone=None",
    )
    p.add_argument(
        "--dense-scores", action="store_true", help="classifier biases 0 (scores 0.5) so post-processing gets busy"
    )
    args = p.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.star_repeat < 1:
        p.error("--repeat and --star-repeat must be ≥ 1 and --warmup ≥ 0")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        p.error(f"--models: unknown {', '.join(unknown) or '(empty list)'}; choose from {','.join(MODELS)}")
    args.models = [m for m in MODELS if m in args.models]  # fixed order, no duplicates
    return args


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _pad32(v: int) -> int:
    return -(-v // 32) * 32


def _size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def make_batch(n: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """[n, 3, pad32(h), pad32(w)]: N(0, 1) image, zero padding (as our Preprocessor pads)."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(n, 3, _pad32(h), _pad32(w))
    batch[:, :, :h, :w] = torch.randn(n, 3, h, w, generator=g)
    return batch


def make_metas(n: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    w, h = size
    pad = (_pad32(h), _pad32(w))
    return [
        {"img_shape": (h, w), "scale_factor": (1.0, 1.0), "pad_shape": pad, "batch_input_shape": pad} for _ in range(n)
    ]


def make_gt(n: int, size: tuple[int, int], seed: int = 1) -> tuple[list, list]:
    """GT_PER_IMAGE boxes per image, sides 32 px … half the short side, inside the image;
    labels 1..79 (torchvision's convention; VFNet gets label − 1)."""
    w, h = size
    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(n):
        side = torch.rand(GT_PER_IMAGE, 2, generator=g) * (min(w, h) / 2 - 32) + 32  # (bw, bh)
        x0 = torch.rand(GT_PER_IMAGE, generator=g) * (w - side[:, 0])
        y0 = torch.rand(GT_PER_IMAGE, generator=g) * (h - side[:, 1])
        boxes.append(torch.stack([x0, y0, x0 + side[:, 0], y0 + side[:, 1]], 1))
        labels.append(torch.randint(1, NUM_CLASSES, (GT_PER_IMAGE,), generator=g))
    return boxes, labels


def tv_images(batch: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """The unpadded [3, h, w] views of our batch; torchvision's transform pads them back."""
    w, h = size
    return [img[:, :h, :w] for img in batch]


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------
def _identity_normalize(image: torch.Tensor) -> torch.Tensor:
    return image


def _identity_resize(image: torch.Tensor, target: dict | None = None):
    return image, target


def _freeze_like_pretrained(model: nn.Module) -> None:
    """Backbone as torchvision builds it with ImageNet weights: FrozenBatchNorm2d everywhere
    (same eps, current affine and running stats) and only layer2-4 trainable."""

    def convert(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                with torch.no_grad():
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
                setattr(module, name, frozen)
            else:
                convert(child)

    body = model.backbone.body
    convert(body)
    for name, param in body.named_parameters():
        param.requires_grad_(name.startswith(("layer2.", "layer3.", "layer4.")))


def build_model(name: str, star_impl: str, tv_bn: str, dense_scores: bool) -> nn.Module:
    """One of MODELS with random weights, the torchvision transform reduced to batching."""
    torch.manual_seed(0)
    if name in OURS:
        if name == "vfnet_r50":
            model = varifocal.build_model("vfnet_r50_fpn", num_classes=NUM_CLASSES, star_conv_impl=star_impl)
        elif name == "retinanet_r50":
            model = varifocal.build_model("retinanet_r50_fpn", num_classes=NUM_CLASSES)
        elif name == "fcos_r50":
            # pytorch-style trunk: the same ResNet-50 as torchvision's (see the module docstring)
            model = build_fcos(depth=50, style="pytorch", num_classes=NUM_CLASSES)
        else:
            model = varifocal.build_model("atss_r50_fpn", num_classes=NUM_CLASSES)
        if dense_scores:
            nn.init.zeros_(getattr(model.bbox_head, OURS[name]).bias)
        return model
    model = TORCHVISION[name](weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    # The input is preprocessed already: no normalisation, no resize (resize would call
    # interpolate even at scale 1). Only batch_images (padding to 32) is left.
    model.transform.normalize = _identity_normalize
    model.transform.resize = _identity_resize
    if tv_bn == "frozen":
        _freeze_like_pretrained(model)
    if dense_scores:
        nn.init.zeros_(model.head.classification_head.cls_logits.bias)
    return model


def make_step(name: str, model: nn.Module, mode: str, size: tuple[int, int], batch: torch.Tensor) -> Callable[[], Any]:
    """A no-argument callable running one inference ('infer') or training step ('train')."""
    n = batch.shape[0]
    metas = make_metas(n, size)
    images = tv_images(batch, size)
    if mode == "infer":
        model.eval()
        if name in OURS:

            def infer():
                with torch.no_grad():
                    return model.predict(batch, metas)
        else:

            def infer():
                with torch.no_grad():
                    return model(images)

        return infer

    model.train()
    gt_boxes, gt_labels = make_gt(n, size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
    if name in OURS:
        labels0 = [lab - 1 for lab in gt_labels]  # ours: 0..num_classes-1

        def losses():
            return model.loss(batch, metas, gt_boxes, labels0)
    else:
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)]

        def losses():
            return model(images, targets)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = sum(losses().values())
        loss.backward()
        opt.step()
        return loss.detach()

    return train_step


def check_backbone_input(model: nn.Module, step: Callable[[], Any], batch: torch.Tensor) -> Any:
    """Run ``step`` once with a pre-hook on ``model.backbone``; the backbone must get ``batch``
    exactly (same shape and values: no resize, no normalisation, same padding)."""
    seen: list[torch.Tensor] = []
    hook = model.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        out = step()
    finally:
        hook.remove()
    if len(seen) != 1 or seen[0].shape != batch.shape or not torch.equal(seen[0], batch):
        got = [tuple(t.shape) for t in seen]
        raise RuntimeError(f"backbone input differs from the shared batch {tuple(batch.shape)}: got {got}")
    return out


# --------------------------------------------------------------------------------------------
# FLOP counting
# --------------------------------------------------------------------------------------------
@contextmanager
def star_conv_stubs(model: nn.Module, star_flops: list[int]):
    """Swap VFNet's two star convs for shape-preserving stubs and record 2·C·O·9·H·W·N each.

    The stub keeps the autograd graph to x and to the distances (so backward reaches the same
    layers) and has no counted op. Without it, FlopCounterMode would miss deform_conv2d and
    count the fast path's sparse addmm as a dense one.
    """
    head = model.bbox_head
    mods = [head.vfnet_reg_refine_dconv, head.vfnet_cls_dconv]

    def stub_for(mod):
        def forward(x, distances):
            n, c, h, w = x.shape
            assert c == mod.out_channels, "stub needs C_in == C_out"
            star_flops.append(2 * c * mod.out_channels * 9 * h * w * n)
            return x * 1.0 + distances.sum() * 0.0

        return forward

    for mod in mods:
        mod.forward = stub_for(mod)  # instance attribute shadows the class method
    try:
        yield
    finally:
        for mod in mods:
            del mod.forward


def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def model_flops(name: str, model: nn.Module, mode: str, size: tuple[int, int], batch: torch.Tensor) -> int:
    """FLOPs of one inference or one training step (forward + backward, no optimizer step)."""
    n = batch.shape[0]
    metas = make_metas(n, size)
    images = tv_images(batch, size)
    star: list[int] = []
    if mode == "infer":
        model.eval()
        if name == "vfnet_r50":
            with star_conv_stubs(model, star), torch.no_grad():
                total = count_flops(lambda: model.predict(batch, metas))
            return total + sum(star)
        if name in OURS:
            with torch.no_grad():
                return count_flops(lambda: model.predict(batch, metas))
        with torch.no_grad():
            return count_flops(lambda: model(images))

    model.train()
    gt_boxes, gt_labels = make_gt(n, size)

    def fwd_bwd():
        if name in OURS:
            loss_dict = model.loss(batch, metas, gt_boxes, [lab - 1 for lab in gt_labels])
        else:
            loss_dict = model(images, [{"boxes": b, "labels": lab} for b, lab in zip(gt_boxes, gt_labels)])
        sum(loss_dict.values()).backward()

    if name == "vfnet_r50":
        with star_conv_stubs(model, star):
            total = count_flops(fwd_bwd)
        total += 3 * sum(star)  # forward, grad of the input, grad of the weight
    else:
        total = count_flops(fwd_bwd)
    model.zero_grad(set_to_none=True)
    return total


# --------------------------------------------------------------------------------------------
# peak memory (child processes)
# --------------------------------------------------------------------------------------------
def peak_rss_kib() -> tuple[int | None, int]:
    """(VmHWM of this process image or None without /proc, ru_maxrss), both in KiB (Linux)."""
    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(
    name: str, mode: str, size: tuple[int, int], threads: int, star_impl: str, tv_bn: str, dense_scores: bool
) -> dict[str, float]:
    """Runs in a fresh 'spawn' process: peak RSS growth (MiB) of building and running a model."""
    torch.set_num_threads(threads)
    n = 1 if mode == "infer" else TRAIN_BATCH
    batch = make_batch(n, size)
    gc.collect()
    hwm0, ru0 = peak_rss_kib()
    model = build_model(name, star_impl, tv_bn, dense_scores)
    step = make_step(name, model, mode, size, batch)
    for _ in range(2):
        step()
    hwm1, ru1 = peak_rss_kib()
    ru_mib = (ru1 - ru0) / 1024.0
    return {
        "peak_mib": ru_mib if hwm0 is None else (hwm1 - hwm0) / 1024.0,
        "source": "ru_maxrss" if hwm0 is None else "VmHWM",
        "vmhwm_baseline_mib": None if hwm0 is None else hwm0 / 1024.0,
        "vmhwm_peak_mib": None if hwm1 is None else hwm1 / 1024.0,
        "ru_maxrss_delta_mib": ru_mib,
        "ru_maxrss_baseline_mib": ru0 / 1024.0,
        "ru_maxrss_peak_mib": ru1 / 1024.0,
    }


def measure_memory(jobs: list[tuple[str, str, tuple[int, int]]], args) -> dict[tuple, dict]:
    ctx = mp.get_context("spawn")
    results = {}
    for name, mode, size in jobs:
        t0 = time.perf_counter()
        try:
            with ctx.Pool(1) as pool:
                res = pool.apply(
                    memory_child, (name, mode, size, args.threads, args.star_impl, args.tv_bn, args.dense_scores)
                )
        except Exception as exc:  # noqa: BLE001 - report and go on with the other children
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["child_s"] = time.perf_counter() - t0
        results[(name, mode, _size_name(size))] = res
        shown = (
            f"{res['peak_mib']:.0f} MiB ({res['source']}; ru_maxrss delta {res['ru_maxrss_delta_mib']:.0f} MiB)"
            if "peak_mib" in res
            else res["error"]
        )
        print(f"  memory {name:<18}{mode:<6}{_size_name(size):<10} {shown}", flush=True)
    return results


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One timed callable. ``group``: 'model', 'part', 'star' or 'peak'."""

    group: str
    name: str
    mode: str
    size: str
    fn: Callable[[], Any]
    flops: int | None = None
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run_rounds(cases: list[Case], warmup: int, repeat: int) -> None:
    """Round-robin: every round runs every case once; the start rotates by one each round."""
    total = warmup + repeat
    for rnd in range(total):
        t_round = time.perf_counter()
        k = rnd % len(cases)
        for case in cases[k:] + cases[:k]:
            t0 = time.perf_counter()
            case.fn()
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                case.times.append(dt)
        kind = "warm-up" if rnd < warmup else "timed"
        print(
            f"  round {rnd + 1}/{total} ({kind}) {time.perf_counter() - t_round:.1f} s, load {os.getloadavg()[0]:.2f}",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# set-up of every case
# --------------------------------------------------------------------------------------------
def breakdown_cases(model: nn.Module, batch: torch.Tensor, size: tuple[int, int]) -> list[Case]:
    """VFNet inference split into backbone, FPN, head, star convs and post-processing."""
    sname = _size_name(size)
    metas = make_metas(batch.shape[0], size)
    head = model.bbox_head
    model.eval()
    captured: list[tuple[nn.Module, tuple]] = []
    hooks = [
        mod.register_forward_pre_hook(lambda mod, a: captured.append((mod, a)))
        for mod in (head.vfnet_reg_refine_dconv, head.vfnet_cls_dconv)
    ]
    with torch.no_grad():
        c_feats = model.backbone(batch)
        p_feats = list(model.neck(c_feats))
        outs = head(p_feats)
    for h in hooks:
        h.remove()

    def nograd(fn):
        def wrapped():
            with torch.no_grad():
                return fn()

        return wrapped

    def stars():
        for mod, a in captured:
            mod(*a)

    # FLOPs of the parts (star convs analytic, see star_conv_stubs)
    star: list[int] = []
    with torch.no_grad():
        f_backbone = count_flops(lambda: model.backbone(batch))
        f_neck = count_flops(lambda: model.neck(c_feats))
        with star_conv_stubs(model, star):
            f_towers = count_flops(lambda: head(p_feats))
        f_post = count_flops(lambda: head.predict(outs, metas))
    return [
        Case("part", "backbone", "infer", sname, nograd(lambda: model.backbone(batch)), f_backbone),
        Case("part", "fpn", "infer", sname, nograd(lambda: model.neck(c_feats)), f_neck),
        Case("part", "head", "infer", sname, nograd(lambda: head(p_feats)), f_towers + sum(star)),
        Case("part", "star convs", "infer", sname, nograd(stars), sum(star)),
        Case("part", "post-processing", "infer", sname, nograd(lambda: head.predict(outs, metas)), f_post),
    ]


def star_cases(shape: list[int]) -> list[Case]:
    """Plain 3×3 conv vs the star deformable conv (fast, torchvision), fwd and fwd+bwd."""
    n, c, h, w = shape
    sname = f"{n}x{c}x{h}x{w}"
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, c, h, w, generator=g)
    dist = torch.rand(n, 4, h, w, generator=g) * 11 + 1  # 1..12 cells, some leave the map
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, 0.01)
    weight = conv.weight
    flops = 2 * c * c * 9 * h * w * n

    def make(kind: str, backward: bool):
        def run():
            xi = x.detach().requires_grad_(backward)
            di = dist.detach().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                y = conv(xi) if kind == "conv" else star_deform_conv2d(xi, di, weight, impl=kind)
            if backward:
                y.backward(torch.ones_like(y))
                conv.weight.grad = None

        return run

    cases = []
    for backward in (False, True):
        for kind in ("conv", "fast", "torchvision"):
            label = "conv3x3" if kind == "conv" else f"star {kind}"
            cases.append(
                Case(
                    "star",
                    label,
                    "fwd+bwd" if backward else "fwd",
                    sname,
                    make(kind, backward),
                    flops * (3 if backward else 1),
                )
            )
    return cases


def peak_case(n: int) -> Case:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    return Case("peak", "matmul fp32", "mm", f"{n}^3", lambda: torch.mm(a, b, out=out), 2 * n**3)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(v: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"bench_detectors: torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"{args.threads} threads, CPU {cpu_model()} ({os.cpu_count()} logical), "
        f"load {load_before[0]:.2f}",
        flush=True,
    )

    # ---- memory (first, before this process grows: item 7 of the docstring) ---------------
    memory: dict[tuple, dict] = {}
    if not args.skip_memory:
        jobs = [(name, "infer", size) for size in args.sizes for name in args.models]
        if not args.skip_train:
            jobs += [(name, "train", args.train_size) for name in args.models]
        print(f"peak memory: {len(jobs)} spawned children, one per (model, mode, size)", flush=True)
        memory = measure_memory(jobs, args)

    # ---- models and cases -------------------------------------------------------------------
    t_setup = time.perf_counter()
    infer_models = {name: build_model(name, args.star_impl, args.tv_bn, args.dense_scores) for name in args.models}
    cases: list[Case] = []
    checked = []
    for size in args.sizes:
        batch = make_batch(1, size)
        for name in args.models:
            model = infer_models[name]
            step = make_step(name, model, "infer", size, batch)
            check_backbone_input(model, step, batch)
            flops = model_flops(name, model, "infer", size, batch)
            cases.append(Case("model", name, "infer", _size_name(size), step, flops))
            checked.append(f"{name} infer {tuple(batch.shape)}")
        if "vfnet_r50" in infer_models:
            cases += breakdown_cases(infer_models["vfnet_r50"], batch, size)
    if not args.skip_train:
        batch = make_batch(TRAIN_BATCH, args.train_size)
        for name in args.models:
            model = build_model(name, args.star_impl, args.tv_bn, args.dense_scores)
            flops = model_flops(name, model, "train", args.train_size, batch)
            step = make_step(name, model, "train", args.train_size, batch)
            check_backbone_input(model, step, batch)
            cases.append(Case("model", name, "train", _size_name(args.train_size), step, flops))
            checked.append(f"{name} train {tuple(batch.shape)}")
    cases.append(peak_case(args.peak_size))
    star_all = star_cases(args.star_shape)
    print(
        f"set-up {time.perf_counter() - t_setup:.1f} s; the backbone of every model got the "
        f"same tensor: {'; '.join(checked)}",
        flush=True,
    )

    # ---- timing -----------------------------------------------------------------------------
    print(f"timing {len(cases)} cases: {args.warmup} warm-up + {args.repeat} timed rounds", flush=True)
    run_rounds(cases, args.warmup, args.repeat)
    star_warmup = max(args.warmup, STAR_WARMUP)
    print(
        f"timing the star conv section ({len(star_all)} cases): {star_warmup} warm-up + "
        f"{args.star_repeat} timed rounds",
        flush=True,
    )
    run_rounds(star_all, star_warmup, args.star_repeat)
    cases += star_all
    load_after = os.getloadavg()

    # ---- tables -----------------------------------------------------------------------------
    peak = next(c for c in cases if c.group == "peak")
    peak_flops_s = peak.flops / peak.median
    n_runs = args.repeat

    def lookup(group, name, mode, size):
        return next((c for c in cases if (c.group, c.name, c.mode, c.size) == (group, name, mode, size)), None)

    def pct_peak(case: Case) -> float | None:
        return None if not case.flops else 100.0 * case.flops / case.median / peak_flops_s

    rows = []
    print()
    print(
        f"== models: median of N={n_runs} runs after {args.warmup} warm-up; ratio = this / "
        f"{BASELINE} in the same mode and size; % peak = (FLOPs / time) / measured matmul "
        f"FLOP/s ({peak_flops_s / 1e9:.1f} GFLOP/s)"
    )
    print(
        f"{'name':<18}{'mode':<7}{'size':<10}{'median ms':>11}{'N':>4}{'ratio':>8}"
        f"{'GFLOPs':>9}{'% peak':>8}{'peak MiB':>10}"
    )
    for case in (c for c in cases if c.group == "model"):
        base = lookup("model", BASELINE, case.mode, case.size)
        ratio = case.median / base.median if base else None
        mem = memory.get((case.name, case.mode, case.size), {})
        row = {
            "name": case.name,
            "mode": case.mode,
            "size": case.size,
            "batch": 1 if case.mode == "infer" else TRAIN_BATCH,
            "median_ms": case.median * 1e3,
            "n": len(case.times),
            "times_ms": [t * 1e3 for t in case.times],
            "ratio_to_baseline": ratio,
            "gflops": case.flops / 1e9 if case.flops else None,
            "pct_peak": pct_peak(case),
            "peak_mib": mem.get("peak_mib"),
            "memory": mem or None,
        }
        rows.append(row)
        print(
            f"{case.name:<18}{case.mode:<7}{case.size:<10}{row['median_ms']:>11.1f}"
            f"{row['n']:>4}{_fmt(ratio, '.2f', 8)}{_fmt(row['gflops'], '.1f', 9)}"
            f"{_fmt(row['pct_peak'], '.1f', 8)}{_fmt(row['peak_mib'], '.0f', 10)}"
        )

    breakdown = {}
    for size in args.sizes if "vfnet_r50" in args.models else []:
        sname = _size_name(size)
        whole = lookup("model", "vfnet_r50", "infer", sname)
        parts = {c.name: c for c in cases if c.group == "part" and c.size == sname}
        head, star = parts["head"], parts["star convs"]
        towers_ms = (head.median - star.median) * 1e3
        towers_flops = head.flops - star.flops
        entries = [
            ("backbone", parts["backbone"].median * 1e3, parts["backbone"].flops),
            ("fpn", parts["fpn"].median * 1e3, parts["fpn"].flops),
            ("head towers", towers_ms, towers_flops),
            ("star convs (2 x 5 lvl)", star.median * 1e3, star.flops),
            ("post-processing", parts["post-processing"].median * 1e3, parts["post-processing"].flops),
        ]
        total_ms = sum(e[1] for e in entries)
        print()
        print(
            f"== VFNet-R50 inference breakdown at {sname} (input "
            f"[1, 3, {_pad32(size[1])}, {_pad32(size[0])}], star impl {args.star_impl}); "
            f"head towers = head ({head.median * 1e3:.1f} ms) - star convs"
        )
        print(f"{'part':<24}{'median ms':>11}{'% of whole':>12}{'GFLOPs':>9}{'% peak':>8}")
        breakdown[sname] = []
        for label, ms, flops in entries:
            pct_whole = 100.0 * ms / (whole.median * 1e3)
            pk = 100.0 * flops / (ms / 1e3) / peak_flops_s if flops and ms > 0 else None
            breakdown[sname].append(
                {
                    "part": label,
                    "median_ms": ms,
                    "pct_of_whole": pct_whole,
                    "gflops": flops / 1e9 if flops else 0.0,
                    "pct_peak": pk,
                }
            )
            print(f"{label:<24}{ms:>11.1f}{pct_whole:>12.1f}{flops / 1e9 if flops else 0.0:>9.1f}{_fmt(pk, '.1f', 8)}")
        pct_sum = 100.0 * total_ms / (whole.median * 1e3)
        print(f"{'sum of parts':<24}{total_ms:>11.1f}{pct_sum:>12.1f}")
        print(f"{'whole predict()':<24}{whole.median * 1e3:>11.1f}{100.0:>12.1f}")

    star_rows = []
    print()
    print(
        f"== star deformable conv vs nn.Conv2d 3x3 at {star_all[0].size} "
        f"(median of N={args.star_repeat} after {star_warmup} warm-up, in rounds of their "
        f"own; ratio = this / conv3x3 in the same mode)"
    )
    print(f"{'op':<18}{'mode':<9}{'median ms':>11}{'ratio':>8}{'% peak':>8}")
    for case in star_all:
        base = lookup("star", "conv3x3", case.mode, case.size)
        ratio = case.median / base.median
        star_rows.append(
            {
                "op": case.name,
                "mode": case.mode,
                "shape": case.size,
                "median_ms": case.median * 1e3,
                "n": len(case.times),
                "times_ms": [t * 1e3 for t in case.times],
                "ratio_to_conv": ratio,
                "pct_peak": pct_peak(case),
            }
        )
        print(f"{case.name:<18}{case.mode:<9}{case.median * 1e3:>11.1f}{ratio:>8.2f}{_fmt(pct_peak(case), '.1f', 8)}")

    # ---- acceptance -------------------------------------------------------------------------
    def ratio_of(group, name, base_name, mode, size):
        a, b = lookup(group, name, mode, size), lookup(group, base_name, mode, size)
        return a.median / b.median if a and b else None

    sshape = star_all[0].size
    tname = _size_name(args.train_size)
    acceptance: dict[str, float | None] = {
        "star_fast_over_conv_fwd_P3": ratio_of("star", "star fast", "conv3x3", "fwd", sshape),
        "star_torchvision_over_conv_fwd_P3": ratio_of("star", "star torchvision", "conv3x3", "fwd", sshape),
    }
    for stem, ours, theirs in PAIRS:  # at 1333x800 and the training size, n/a where not run
        acceptance[f"{stem}_infer_1333x800"] = ratio_of("model", ours, theirs, "infer", "1333x800")
        acceptance[f"{stem}_train_{tname}"] = ratio_of("model", ours, theirs, "train", tname)
    for size in args.sizes:  # every other inference size run, for reference
        for stem, ours, theirs in PAIRS:
            acceptance.setdefault(
                f"{stem}_infer_{_size_name(size)}", ratio_of("model", ours, theirs, "infer", _size_name(size))
            )
    print()
    print(
        "== acceptance ratios (medians: ours / torchvision's, same mode and size; star conv / conv3x3; n/a = not run)"
    )
    notes = {
        "star_fast_over_conv_fwd_P3": "   (acceptance 1: <= 1.5)",
        "vfnet_over_fcos_infer_1333x800": "   (<= 1.15)",
        f"vfnet_over_fcos_train_{tname}": "   (<= 1.3)" if tname == "640x640" else "",
        "retinanet_over_tv_retinanet_infer_1333x800": "   (<= 1.05)",
        "fcos_over_tv_fcos_infer_1333x800": "   (<= 1.05)",
    }
    for key, val in acceptance.items():
        shown = "n/a" if val is None else f"{val:.2f}"
        print(f"  {key:<46}{shown:>6}{notes.get(key, '')}")
    print(
        f"  measured peak: {peak_flops_s / 1e9:.1f} GFLOP/s ({peak.name} {peak.size}, "
        f"median of N={n_runs}); load avg (1 min) before/after: {load_before[0]:.2f} / "
        f"{load_after[0]:.2f} on {os.cpu_count()} logical CPUs"
    )

    result = {
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "load_avg_before": list(load_before),
        "load_avg_after": list(load_after),
        "baseline": BASELINE,
        "settings": {
            "models": args.models,
            "sizes": [_size_name(s) for s in args.sizes],
            "train_size": _size_name(args.train_size),
            "train_batch": TRAIN_BATCH,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "star_repeat": args.star_repeat,
            "star_warmup": star_warmup,
            "star_impl": args.star_impl,
            "star_shape": args.star_shape,
            "peak_size": args.peak_size,
            "tv_bn": args.tv_bn,
            "dense_scores": args.dense_scores,
            "skip_train": args.skip_train,
            "skip_memory": args.skip_memory,
            "num_classes": NUM_CLASSES,
        },
        "peak_matmul": {
            "n": args.peak_size,
            "median_ms": peak.median * 1e3,
            "gflop_s": peak_flops_s / 1e9,
            "times_ms": [t * 1e3 for t in peak.times],
        },
        "models": rows,
        "breakdown": breakdown,
        "star_conv": star_rows,
        "acceptance": acceptance,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
