"""Classification heads: the ``verb:97,noun:300`` notation, and a model output's logits per head.

Below both the evaluation harness and the testbed, so either can split logits without importing the other.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .loading import stored_settings


def parse_heads(text: str | None) -> dict[str, int] | None:
    """Parse ``verb:97,noun:300`` (``--heads``, or a checkpoint's stored heads) into ordered head sizes."""
    if not text:
        return None
    heads = {}
    for part in text.split(","):
        name, _, size = part.partition(":")
        if not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise ValueError(f"--heads expects NAME:SIZE[,NAME:SIZE...] like verb:97,noun:300, got {text!r}")
        heads[name.strip()] = int(size)
    return heads


def heads_text(text: str) -> str:
    """``--heads`` as given, once it parses (a flag's ``parse``)."""
    parse_heads(text)
    return text


def format_heads(heads: dict[str, int] | None) -> str | None:
    """The ``verb:97,noun:300`` notation of ordered head sizes (None for a single unnamed head)."""
    return ",".join(f"{name}:{size}" for name, size in heads.items()) if heads else None


def model_heads(config: Any, heads: str | None = None) -> dict[str, int] | None:
    """The heads to split a model's logits into: ``heads`` (``--heads``), else those its config stores."""
    return parse_heads(heads or stored_settings(config).get("heads"))


def logits_per_head(output: Any, heads: dict[str, int] | None) -> dict[str, Tensor]:
    """Logits per head, from the first of: a ``head_logits`` dict (Motionformer), ``verb_logits``/``noun_logits``,
    ``logits`` split by ``heads``, or ``logits`` as the single ``class`` head."""
    if getattr(output, "head_logits", None):
        return dict(output.head_logits)
    if getattr(output, "verb_logits", None) is not None and getattr(output, "noun_logits", None) is not None:
        return {"verb": output.verb_logits, "noun": output.noun_logits}
    logits = output.logits
    if not heads:
        return {"class": logits}
    if sum(heads.values()) != logits.shape[-1]:
        raise ValueError(
            f"--heads {format_heads(heads)} add up to {sum(heads.values())} logits but the model has "
            f"{logits.shape[-1]}"
        )
    return dict(zip(heads, logits.split(list(heads.values()), dim=-1)))
