"""The student's "centernet" family: FairMOT's anchor-free detector with a re-ID embedding head.

A backbone (the same ones as RetinaNet's, same ImageNet weights) feeds an
upsampling neck to stride 4, where four heads predict a person-centre heatmap,
the box (distances to its sides, or its size), the sub-cell centre offset and
the embedding. Training reads boxes and embeddings at each object's centre cell
(:mod:`.targets`, :mod:`.losses`), or with AdaMOT's options at k cells per object
chosen by an identity-aware matching (:mod:`.assignment`, :mod:`.positives`,
:mod:`.reid_probability`); inference keeps heatmap peaks and reads the embedding
there (:mod:`.decoding`). Built through :mod:`student.families`.
"""

from .decoding import decode_center_outputs
from .losses import CenterNetCriterion, CenterNetLossTerms
from .model import CenterNetDetector, CenterNetOutputs
from .targets import CenterTargets, build_center_targets, gaussian_radius

__all__ = [
    "CenterNetCriterion",
    "CenterNetDetector",
    "CenterNetLossTerms",
    "CenterNetOutputs",
    "CenterTargets",
    "build_center_targets",
    "decode_center_outputs",
    "gaussian_radius",
]
