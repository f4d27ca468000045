"""Import torchvision against a torch build its compiled ops do not match.

The only torchvision release for torch 2.13.0 (0.28.0) is published as a CUDA wheel whose
compiled ops (``torchvision._C``) cannot load against the CPU build of torch. ``import
torchvision`` then fails inside ``torchvision._meta_registrations`` ("operator
torchvision::nms does not exist"), because that module registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` by name.

:func:`import_torchvision` is the one way this project imports torchvision. It does, in order:

1. nothing more than ``import torchvision`` when the ``torchvision::nms`` operator exists or
   torchvision's compiled library loads (a matching CPU or CUDA build): then no state changes;
2. otherwise it defines the two operators in torch's dispatcher with a plain torch
   implementation of greedy NMS (the torchvision semantics: kept indices by decreasing
   score), imports torchvision, and replaces the compiled-ops check *of*
   ``torchvision.ops.boxes`` only (``_assert_has_ops``) by one that accepts the Python
   ``nms`` op, so that ``torchvision.ops.nms`` / ``batched_nms`` (all RetinaNet
   post-processing needs) run. The other compiled ops (``roi_align``, ``deform_conv2d``,
   rotated boxes, ...) stay unavailable and keep raising torchvision's own error.

Step 2 is process-wide (a torch library definition and one patched module attribute), but it
only fills in an operator that is missing; without it torchvision cannot be imported at all.
It runs at most once per process. Importing this module itself changes nothing.
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


def _qnms_reference(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_reference(dets.dequantize(), scores.dequantize(), iou_threshold)


def using_python_nms() -> bool:
    """Whether this process runs torchvision's ``nms`` with the Python implementation above."""
    return _library is not None


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, first registering the Python ``nms`` op only if the compiled one is missing."""
    if not (_has_schema() or _try_loading_compiled_ops()):
        _register_python_nms()
    import torchvision
    import torchvision.ops.boxes as box_ops

    if using_python_nms() and box_ops._assert_has_ops is not _assert_nms_registered:
        box_ops._assert_has_ops = _assert_nms_registered
    return torchvision


def _assert_nms_registered() -> None:
    """Stands in for torchvision.ops.boxes' compiled-ops check when the Python ``nms`` is in use."""
    if not _has_schema():
        raise RuntimeError("torchvision::nms is not registered (tdt.torch_compat.import_torchvision)")


def _register_python_nms() -> None:
    global _library
    if _library is not None:
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        library.define(schema)
    library.impl("nms", nms_reference, "CPU")
    library.impl("nms", nms_reference, "CUDA")
    library.impl("qnms", _qnms_reference, "CPU")
    _library = library


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
