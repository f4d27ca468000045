"""A seeded synthetic pedestrian world in real dataset formats (CrowdHuman .odgt, MOTChallenge).

    python -m pipeline.synth --out out/demo/world [--preset demo|tiny] [--seed 0] [--workers N]

Public API: ``build_config`` (a preset plus overrides) and ``generate`` (write it, or confirm
an identical world is already there). Read the output with the ``synth-crowdhuman`` and
``synth-mot`` manifests.
"""

from pipeline.synth.config import PRESETS, WorldConfig, build_config
from pipeline.synth.world import Outcome, WorldError, generate

__all__ = ["PRESETS", "Outcome", "WorldConfig", "WorldError", "build_config", "generate"]
