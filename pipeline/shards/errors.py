"""The one base class of every problem with a shard directory, so a command can catch them together."""

from __future__ import annotations


class ShardError(ValueError):
    """A shard directory that cannot be used as it is: the message names the file and the problem."""


__all__ = ["ShardError"]
