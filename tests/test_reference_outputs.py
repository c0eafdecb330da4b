"""What the library computes, pinned: every family's merged outputs and source maps at a fixed seed and input.

``data/reference_outputs.safetensors`` was written by this file (``python tests/test_reference_outputs.py``) before
the code around the merging core was restructured; the test requires the same tensors bit for bit, so a change that
moves code without meaning to change results cannot change them. Computed on one thread (matrix products may sum in
another order on several), on the project's CPU; rewrite the file only for a change that is meant to change results,
and say so in its commit.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, main_output, tiny_input, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import videotome

REFERENCE = Path(__file__).parent / "data" / "reference_outputs.safetensors"
DIVIDED = ("timesformer", "motionformer")
CASES = {
    "merge": dict(r=3),
    "merge_no_prop_attn": dict(r=3, prop_attn=False),
    "merge_fraction_increasing": dict(r=0.2, schedule="increasing"),
    "drop_decreasing": dict(r=2, strategy="drop", schedule="decreasing"),
    "hybrid": dict(r=3, strategy="hybrid", threshold=0.5),
    "random_merge": dict(r=2, strategy="random_merge", seed=7),
    "random_drop": dict(r=2, strategy="random_drop", seed=7),
    "aligned": dict(r=2, divided="aligned"),
}


@cache
def machine() -> str:
    """The processor, torch's CPU capability and torch's version: what fixes the bits of a float computation."""
    fields = ("vendor_id", "cpu family", "model", "model name", "stepping")
    found: dict[str, str] = {}
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        key, _, value = line.partition(":")
        if key.strip() in fields:
            found.setdefault(key.strip(), value.strip())
    processor = " / ".join(found.get(field, "?") for field in fields)
    return f"{processor} / {torch.backends.cpu.get_cpu_capability()} / torch {torch.__version__}"


def cases(family: str) -> list[str]:
    """The settings that apply to a family (aligned merging exists only for divided space-time models)."""
    return [name for name in CASES if name != "aligned" or family in DIVIDED]


def compute(family: str, case: str) -> dict[str, torch.Tensor]:
    """The merged output and source map of the family's tiny model on its fixed input, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, pixel_values = tiny_model(family), tiny_input(family)
        videotome.patch(model, **CASES[case], trace_source=True)
        with torch.inference_mode():
            output = main_output(model(pixel_values=pixel_values))
        return {"output": output.contiguous(), "sources": videotome.sources(model).contiguous()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_equal_the_committed_reference(family):
    reference = load_file(REFERENCE)
    with safe_open(REFERENCE, "pt") as handle:
        exact = handle.metadata()["machine"] == machine()
    for case in cases(family):
        for name, value in compute(family, case).items():
            where = f"{family}/{case}/{name}"
            expected = reference[where]
            assert value.shape == expected.shape, f"{where}: shape {value.shape} != {expected.shape}"
            if exact or name == "sources":
                assert torch.equal(value, expected), (
                    f"{where} differs from the reference by up to {(value - expected).abs().max():.3g}"
                )
            else:
                torch.testing.assert_close(value, expected, rtol=1e-5, atol=2e-6, msg=lambda text: f"{where}: {text}")


if __name__ == "__main__":
    tensors = {
        f"{family}/{case}/{name}": value
        for family in FAMILIES
        for case in cases(family)
        for name, value in compute(family, case).items()
    }
    REFERENCE.parent.mkdir(exist_ok=True)
    save_file(tensors, REFERENCE, metadata={"machine": machine()})
    print(f"wrote {len(tensors)} tensors to {REFERENCE}")
