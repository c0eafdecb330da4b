"""A real-weight proxy of a video-LLM's token reduction: DINOv2's first layers as the vision tower, its last as the LM.

    PYTHONPATH=src python benchmarks/vlm_proxy.py [--out vlm_proxy.jsonl]

No video-LLM weights are reachable here, so this stands in for one with real weights and a real clip. Needs
``../shared/data/dinov2-small`` and ``../shared/data/clips/bigbuckbunny.mp4`` (the nearest ``shared/data`` above the
repository); without them it says so in one line and exits 0.

Sixteen frames (uniform over the clip, preprocessed as ``benchmarks/dinov2_merge_stats.py`` does: 224 x 224, 257
tokens a frame) go through DINOv2-small's first 8 layers one frame at a time (the vision tower). The last 4 layers
then attend jointly over every frame's 256 patch tokens concatenated, after the 16 class tokens (the language
model; the class tokens are protected, as a video-LLM's special tokens are). Four of twelve: enough depth for the
reduced tokens to interact over several layers, as a language model's do, while the first eight still give the
per-frame features a vision tower hands over. The patch tokens are reduced between the two with
:func:`videotome.vlm.reduce_video` (matched on the features themselves, as a video-LLM's projector output is),
and the output, after DINOv2's final norm, is pooled two ways: the size-weighted mean of the patch tokens, and the
mean of the class tokens. Each is compared with the unreduced run (cosine similarity, relative error) over keep =
0.5 / 0.25 / 0.125 for: merging with proportional attention (log size added to every key's logits, the project's
``attend``), merging without, ``drop``, ``random_drop``, per-frame merging, and frame subsampling (every k-th
frame's tokens, k = 1 / keep).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videotome.adapters.base import attend, weighted_mean
from videotome.adapters.vit import Dinov2Adapter
from videotome.vlm import VideoMergeSettings, reduce_video

REPOSITORY = Path(__file__).resolve().parents[1]
TOWER_LAYERS = 8
KEEPS = (0.5, 0.25, 0.125)


@dataclass(frozen=True)
class Method:
    """One way of reducing the tokens: a reduction setting with or without proportional attention, or frame
    subsampling (``settings`` None)."""

    name: str
    settings: dict | None
    prop_attn: bool = False


METHODS = (
    Method("merge + prop attn", {"strategy": "merge"}, prop_attn=True),
    Method("merge", {"strategy": "merge"}),
    Method("drop", {"strategy": "drop"}),
    Method("random_drop", {"strategy": "random_drop"}),
    Method("per-frame merge + prop attn", {"strategy": "merge", "mode": "per_frame"}, prop_attn=True),
    Method("frame subsampling", None),
)
_ADAPTER = Dinov2Adapter()


def tower(model: nn.Module, pixels: Tensor, layers: int) -> Tensor:
    """Each frame (T, 3, H, W) through the embedding and the first ``layers`` blocks on its own: (T, 1 + S, C)."""
    x = model.embeddings(pixels)
    for layer in model.encoder.layer[:layers]:
        x = layer(x)
    return x


def language_model(model: nn.Module, x: Tensor, size: Tensor, layers: int, prop_attn: bool) -> Tensor:
    """The blocks after the first ``layers`` over one joint sequence x (1, N, C) of tokens holding ``size`` (1, N)
    patches each, with log(size) added to every key's logits when ``prop_attn``; then the final norm."""
    bias = size.log() if prop_attn else None
    for layer in model.encoder.layer[layers:]:
        q, k, v, scale, _ = _ADAPTER.qkv(layer, _ADAPTER.norm1(layer)(x))
        x = x + _ADAPTER.attention_residual(layer, attend(q, k, v, scale=scale, log_size=bias, implementation="eager"))
        x = x + _ADAPTER.mlp_residual(layer, x)
    return model.layernorm(x)


def run(model: nn.Module, features: Tensor, method: Method | None, keep: float, layers: int) -> tuple[Tensor, Tensor]:
    """The pooled outputs (patch mean, class-token mean) after reducing the tower's ``features`` (T, 1 + S, C) by
    ``method`` to ``keep`` (None: unreduced)."""
    frames = features.shape[0]
    cls, patches = features[:, 0], features[:, 1:]
    if method is None:
        kept, size = patches.flatten(0, 1), torch.ones(patches.shape[0] * patches.shape[1])
    elif method.settings is None:
        step = round(1 / keep)
        kept = patches[::step].flatten(0, 1)
        size = torch.ones(kept.shape[0])
    else:
        settings = VideoMergeSettings(keep=keep, **method.settings)
        kept, reduction = reduce_video(patches, settings, generator=torch.Generator().manual_seed(0))
        size = reduction.size
    size = torch.cat([torch.ones(frames), size]).unsqueeze(0)
    prop_attn = method is not None and method.prop_attn
    x = language_model(model, torch.cat([cls, kept]).unsqueeze(0), size, layers, prop_attn)
    return weighted_mean(x[:, frames:], size[:, frames:, None])[0], x[0, :frames].mean(0)


def compare(
    model: nn.Module, pixels: Tensor, keeps: tuple[float, ...] = KEEPS, layers: int = TOWER_LAYERS
) -> list[dict]:
    """For every method and kept share, how close the pooled outputs come to the unreduced ones."""
    with torch.inference_mode():
        features = tower(model, pixels, layers)
        references = run(model, features, None, 1.0, layers)
        tokens = features.shape[0] * (features.shape[1] - 1)
        rows = []
        for keep in keeps:
            for method in METHODS:
                outputs = run(model, features, method, keep, layers)
                row = {"method": method.name, "keep": keep, "tokens": tokens}
                for name, out, ref in zip(("patch_mean", "cls_mean"), outputs, references):
                    row[f"{name}_cosine"] = F.cosine_similarity(out, ref, dim=0).item()
                    row[f"{name}_rel_error"] = ((out - ref).norm() / ref.norm()).item()
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| method | keep | patch mean: cosine | rel. error | class tokens: cosine | rel. error |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['keep']} | {row['patch_mean_cosine']:.4f} | "
                     f"{row['patch_mean_rel_error']:.4f} | {row['cls_mean_cosine']:.4f} | "
                     f"{row['cls_mean_rel_error']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from dinov2_merge_stats import CLIP, MODEL, load

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("vlm_proxy.jsonl"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    missing = [str(path) for path in (MODEL / "config.json", CLIP) if not path.is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found (the shared data beside the repository)")
        return 0
    torch.set_num_threads(args.threads)
    model, pixels = load()
    model.set_attn_implementation("eager")
    rows = compare(model, pixels)
    with args.out.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print(f"DINOv2-small, {pixels.shape[0]} frames of {CLIP.name}, layers 1-{TOWER_LAYERS} per frame, "
          f"{TOWER_LAYERS + 1}-{len(model.encoder.layer)} joint over {rows[0]['tokens']} patch tokens:\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
