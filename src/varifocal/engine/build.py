"""Building the datasets and the model of a configuration (spec §6)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..checkpoint import load_checkpoint
from ..config import Config
from ..data import CocoDetection, VOCDetection, build_test_transforms, build_train_transforms
from ..data.ssd_transforms import build_ssd_train_transforms
from ..data.tiles import TiledDataset
from ..models.zoo import build_model

__all__ = ["build_datasets", "model_kwargs_from_config", "model_from_config"]


def build_datasets(cfg: Config, train: bool = True, val: bool = True) -> tuple[Any, Any]:
    """The training and validation datasets of ``cfg.data`` (COCO JSON or VOC XML).

    With ``data.tiles.size`` set, the training set is a :class:`~varifocal.data.tiles.TiledDataset`
    over the images (which then only decode); the training transforms and ``train.seed`` go to
    the tiles. The validation set always holds whole images.

    Training transforms: ``data.pipeline == 'default'``: resize (keep-ratio, or a warp to
    ``train_scale`` as ``(width, height)`` with ``data.keep_ratio: false``) and flip;
    ``'ssd'``: :func:`~varifocal.data.ssd_transforms.build_ssd_train_transforms` to
    ``train_scale`` read as ``(width, height)``, zoom-out up to ``ssd_expand_ratio``
    (``refinedet_spec.md`` §11; ``multiscale_mode``
    and ``train_scales`` are not used). Validation: a resize to ``model.test_scale``,
    keep-ratio or warped after ``data.keep_ratio``.
    """
    d = cfg.data
    train_ds = val_ds = None
    if d.pipeline == "ssd":
        train_tf = build_ssd_train_transforms(
            tuple(d.train_scale), flip_prob=d.flip_prob, expand_ratio=d.ssd_expand_ratio
        )
    else:
        train_tf = build_train_transforms(
            tuple(d.train_scale), d.multiscale_mode, d.train_scales or None, d.flip_prob, keep_ratio=d.keep_ratio
        )
    tile_size = d.tiles.wh()
    image_tf, image_seed = (None, None) if tile_size else (train_tf, cfg.train.seed)
    test_tf = build_test_transforms(tuple(cfg.model.test_scale), keep_ratio=d.keep_ratio)
    if d.format == "coco":
        if train:
            train_ds = CocoDetection(
                d.path(d.train_images),
                d.path(d.train_ann),
                image_tf,
                d.skip_bad_images,
                drop_empty=d.drop_empty,
                min_size=d.min_size,
                seed=image_seed,
            )
        if val:
            val_ds = CocoDetection(d.path(d.val_images), d.path(d.val_ann), test_tf, d.skip_bad_images)
    else:
        if train:
            train_ds = VOCDetection(
                d.root,
                d.train_set,
                d.class_names,
                image_tf,
                d.skip_bad_images,
                drop_empty=d.drop_empty,
                min_size=d.min_size,
                seed=image_seed,
            )
        if val:
            val_ds = VOCDetection(d.root, d.val_set, d.class_names, test_tf, d.skip_bad_images)
    if train_ds is not None and tile_size:
        t = d.tiles
        train_ds = TiledDataset(train_ds, tile_size, t.overlap, t.min_visibility, train_tf, cfg.train.seed, t.jitter)
    return train_ds, val_ds


def test_cfg_from_config(cfg: Config) -> dict[str, Any]:
    """The ``eval`` settings that the config sets, as head ``test_cfg`` overrides; unset
    (``null``) ones keep the detector's own defaults (e.g. NMS 0.5 for RetinaNet, 0.6 for VFNet)."""
    e = cfg.eval
    values = {"score_thr": e.score_thr, "nms_iou": e.nms_iou, "nms_pre": e.nms_pre, "max_per_img": e.max_per_img}
    return {k: v for k, v in values.items() if v is not None}


def model_kwargs_from_config(cfg: Config) -> dict[str, Any]:
    """Builder keyword arguments that rebuild the model of ``cfg`` (stored in checkpoints)."""
    kwargs: dict[str, Any] = {
        "num_classes": cfg.model.num_classes,
        "scale": list(cfg.model.test_scale),
        "test_cfg": test_cfg_from_config(cfg),
    }
    if cfg.model.use_vfl is not None:
        kwargs["use_vfl"] = cfg.model.use_vfl
    return kwargs


def model_from_config(cfg: Config, pretrained: bool = True) -> nn.Module:
    """Build ``cfg.model.name`` (and load ``cfg.model.load_from`` if set)."""
    kwargs = model_kwargs_from_config(cfg)
    if pretrained and cfg.model.pretrained_backbone:
        kwargs["pretrained_backbone"] = cfg.model.pretrained_backbone
    model = build_model(cfg.model.name, **kwargs)
    if cfg.model.load_from:
        load_checkpoint(model, cfg.model.load_from)
    return model
