"""The paper's analyses of how tokens merge: layer duplication (and, with them, the pictures and splicing)."""

from .duplicate import Duplication, duplicate_layer

__all__ = ["Duplication", "duplicate_layer"]
