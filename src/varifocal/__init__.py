"""varifocal: IoU-aware dense object detection (VarifocalNet and friends) in plain PyTorch.

Stable public API::

    import varifocal
    varifocal.list_models()
    model = varifocal.build_model("vfnet_r50_fpn", num_classes=80)
    varifocal.load_checkpoint(model, "vfnet_r50_fpn_1x_coco_20201027-38db6f58.pth")
    model.eval()
    detections = model([image])  # image: [3, H, W] float RGB 0-255
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .models.zoo import build_model, list_models

__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "load_checkpoint", "save_checkpoint", "CheckpointError", "__version__"]
