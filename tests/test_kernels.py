"""Tests of the CPU-kernel work-arounds: the short-dimension softmax, and attention that uses it."""

import pytest
import torch

from videotome.adapters.base import attend
from videotome.kernels import CPU_VECTOR_WIDTH, softmax_last_dim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_softmax_last_dim_matches_torch_on_short_and_long_dimensions(dtype: torch.dtype):
    """Short dimensions take the exp-and-sum path on the CPU, long ones torch's kernel; both are the softmax."""
    torch.manual_seed(0)
    for size in (1, 2, 5, CPU_VECTOR_WIDTH - 1, CPU_VECTOR_WIDTH, CPU_VECTOR_WIDTH + 3, 40):
        logits = (20 * torch.randn(3, 7, size)).to(dtype)
        result = softmax_last_dim(logits)
        assert result.dtype == dtype and result.shape == logits.shape
        tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(result, logits.softmax(dim=-1), rtol=tolerance, atol=tolerance)


def test_softmax_last_dim_gradient_matches_torch():
    logits = torch.randn(4, 6, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, 5, dtype=torch.float64)
    (softmax_last_dim(logits) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    (logits.softmax(dim=-1) * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad)


@pytest.mark.parametrize("keys", [3, CPU_VECTOR_WIDTH + 1])
def test_attention_over_merged_keys_is_the_same_attention(keys: int):
    """The short-dimension softmax changes speed, not results (a frame of 3 merged tokens, or a longer one)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, keys, 8) for _ in range(3))
    log_size = torch.rand(2, keys).log1p()
    reference = attend(q, k, v, scale=8**-0.5, log_size=log_size, implementation="eager")
    merged = attend(q, k, v, scale=8**-0.5, log_size=log_size, implementation="eager", merged_keys=True)
    torch.testing.assert_close(merged, reference)
    assert merged.shape == (2, keys, 16)
