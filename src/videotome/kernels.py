"""Work-arounds for slow paths of torch's CPU kernels that token merging runs into, shared by models and adapters."""

from __future__ import annotations

import torch


def _cpu_vector_width() -> int:
    """Floats per SIMD vector of torch's CPU kernels on this machine (AVX-512: 16, AVX2 and SVE-256: 8, else 4)."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 16 if capability.startswith("AVX512") else 8 if capability in ("AVX2", "SVE256") else 4


# torch's CPU softmax vectorises along the last dimension only when that dimension holds at least one full vector
CPU_VECTOR_WIDTH = _cpu_vector_width()


def softmax_last_dim(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, fast on the CPU also when that dimension is short.

    Attention in divided space-time models takes softmaxes over few entries: a trajectory's 8 frames, and a frame's
    patches, which token merging brings down to a handful. Below one SIMD vector (16 floats with AVX-512) torch's
    CPU softmax falls back to a scalar loop, 4-5x slower on this project's machine than max, exp and sum as separate
    vectorised ops, so those are used there (in float32 for half inputs). Longer dimensions, and other devices, get
    ``logits.softmax(-1)``.
    """
    if logits.device.type != "cpu" or logits.shape[-1] >= CPU_VECTOR_WIDTH:
        return logits.softmax(dim=-1)
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    exp = (work - work.amax(dim=-1, keepdim=True)).exp()
    return (exp / exp.sum(dim=-1, keepdim=True)).to(logits.dtype)
