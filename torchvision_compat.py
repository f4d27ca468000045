"""Make torchvision importable against the local CPU torch build.

The only torchvision matching torch 2.13.0 (0.28.0) ships as a CUDA wheel whose
compiled ops cannot load against the CPU torch. Importing it then fails inside
``torchvision._meta_registrations`` ("operator torchvision::nms does not exist").
Importing this module first defines ``torchvision::nms`` with a plain torch
implementation, so torchvision imports and ``torchvision.ops.nms`` /
``batched_nms`` (all RetinaNet post-processing needs) work. When the compiled
ops do load (a matching CPU or CUDA build), this module changes nothing.

Usage: ``import torchvision_compat  # noqa: F401`` before any torchvision import,
or call :func:`import_torchvision`.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import types

import numpy as np
import torch

# torchvision._meta_registrations registers fake kernels for exactly these two ops
# by name at import time, so both schemas must exist before `import torchvision`.
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None


def nms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics: indices kept, by decreasing score."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = dets[order].to(torch.float32)
    areas = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (areas[:, None] + areas[None, :] - inter).clamp(min=1e-12)
    over = (iou > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def _register_python_nms() -> None:
    global _library
    if _library is not None:
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    _library.impl("nms", nms_reference, "CPU")
    _library.impl("nms", nms_reference, "CUDA")
    _library.impl("qnms", _qnms_reference, "CPU")


def _qnms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_reference(dets.dequantize(), scores.dequantize(), iou_threshold)


def _has_schema() -> bool:
    try:
        torch._C._get_schema("torchvision::nms", "")
    except RuntimeError:
        return False
    return True


def _try_loading_compiled_ops() -> bool:
    """Load torchvision's own ``_C`` library if it is compatible (without importing torchvision)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for location in spec.submodule_search_locations:
        for path in glob.glob(os.path.join(location, "_C*.so")) + glob.glob(
            os.path.join(location, "_C*.pyd")
        ):
            try:
                torch.ops.load_library(path)
            except (OSError, RuntimeError):
                return False
            return _has_schema()
    return False


def install() -> bool:
    """Register the Python ``nms`` op if the compiled one is unavailable.

    Returns True when the Python fallback is in use.
    """
    if _has_schema() or _try_loading_compiled_ops():
        return _library is not None
    _register_python_nms()
    return True


def import_torchvision() -> types.ModuleType:
    """Import torchvision after :func:`install`, patching its op check for ``nms``."""
    using_fallback = install()
    import torchvision
    import torchvision.ops.boxes as box_ops

    if using_fallback:
        # torchvision.ops.nms asserts its compiled library loaded; the Python op stands in.
        box_ops._assert_has_ops = lambda: None
    return torchvision


USING_PYTHON_NMS = install()
