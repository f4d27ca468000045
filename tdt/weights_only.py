"""What ``torch.load(weights_only=True)`` means when it fails, said without torch's advice.

torch's own message starts by suggesting a retry with ``weights_only=False`` (or
allow-listing the class it met), the one thing to avoid with a file of unknown
origin: full unpickling can run any code the file names. The project reports the
failure itself: either the file is a pickle that refers to something the
weights-only unpickler refuses (:func:`refused_global`), or it is not readable at
all (:func:`failure_reason`: truncated, corrupt, not a torch file).
"""

from __future__ import annotations

import re

# The messages of torch's weights-only unpickler (torch/_weights_only_unpickler.py) that
# mean "this file refers to code or a class I will not load"; group 1 is what it refers to.
_REFUSALS = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
    re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs to|$)", re.MULTILINE),
    re.compile(r"allowlisted via `add_safe_globals`,? but got (.+)$", re.MULTILINE),
)
_ADVICE_MARKERS = ("weights_only", "Weights only load failed", "Check the documentation", "allowlist")
_UNPICKLER_PREFIX = "WeightsUnpickler error:"
MAX_REASON_LENGTH = 160


def refused_global(error: BaseException) -> str | None:
    """What a file refers to that the weights-only unpickler refused to load (e.g.
    ``numpy.core.multiarray.scalar`` or ``posix.system``), or None when ``error`` is not such a refusal."""
    text = str(error)
    for pattern in _REFUSALS:
        match = pattern.search(text)
        if match:
            return match.group(1).strip().rstrip(".")
    return None


def failure_reason(error: BaseException) -> str:
    """The informative line of a ``torch.load`` error, without torch's advice, at most 160 characters."""
    lines = []
    for line in str(error).splitlines():
        line = line.strip()
        if line.startswith(_UNPICKLER_PREFIX):
            line = line[len(_UNPICKLER_PREFIX) :].strip()
        if line and not any(marker in line for marker in _ADVICE_MARKERS):
            lines.append(line)
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= MAX_REASON_LENGTH else reason[: MAX_REASON_LENGTH - 3] + "..."


__all__ = ["failure_reason", "refused_global"]
