"""Export of the detectors to ONNX, the ONNX Runtime wrapper and the parity check (issue 14).

- :func:`export_onnx` (``onnx_export.py``): a detector → an ``.onnx`` detection graph with NMS and
  metadata; :class:`OnnxDetector` runs it with ONNX Runtime; :func:`read_metadata`.
- ``graph.py``: the exported module (traceable post-processing) and its differences from eager.
- ``star_conv.py``: the star deformable conv as GridSample + conv (portable) or ONNX DeformConv.
- ``check.py``: PyTorch vs ONNX Runtime on real images (``varifocal export --check``).
"""

from .onnx_export import PRECISIONS, OnnxDetector, export_onnx, read_metadata
from .star_conv import DEFORM_MODES, star_deform_conv2d_portable

__all__ = ["export_onnx", "OnnxDetector", "read_metadata", "PRECISIONS", "DEFORM_MODES", "star_deform_conv2d_portable"]
