"""Is merging visual or semantic? Splicing on the testbed, where background and digit are set independently.

    PYTHONPATH=src python benchmarks/testbed_splice.py --clips 128

Pollard & Wray (Figure 8) splice frames of a donor clip into a source clip and find that tokens join patches of the
two clips where they look alike ("the merging process is predominantly visual"). On the testbed the generator sets
the background photo (and its pan) and the digit independently, so for each of the first ``--clips`` validation
clips three donors are spliced in:

- (a) same digit, other background: another validation clip with the same noun and another verb (so another
  background crop, pan, colour and motion);
- (b) other digit, same background: the same clip re-rendered with a digit image of another class
  (``generate(..., digits=...)``: background, pan, motion track, colour and noise identical);
- (c) other digit, other background: another validation clip with another noun and another verb;

and two references: the clip spliced with itself (upper) and with a constant mid-grey clip (lower). The donors are
drawn from ``--seed``. Each packaged testbed model merges at the demo's operating point (merge, constant schedule,
``testbed.settings.operating_point``); frames are spliced in groups of the model's tubelet (2 frames for VideoMAE,
ViViT and the Motionformer; 1 for the TimeSformer, spliced over the 8 frames it sees, after ``select_frames``), so
every time step comes from one clip. ``cross_clip_share`` is the share of kept patches held by final tokens that hold
patches of both clips. At the operating point the joint models end with 3 (VideoMAE) and 4 (ViViT) tokens, which
hold patches of both clips whatever the donor, so the share is read after the first ``--depths`` layers too (the
operating point's merging in those layers only, which merges exactly what the operating point merges up to there).
Prints a Markdown table: mean, std and median over clips, per model, donor and depth, and the per-clip differences
between the donors.

The divided models (TimeSformer, Motionformer) merge within each frame, so no token can hold patches of two time
steps and their share is 0 by construction; they are run anyway, as a check.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

import videotome
from videotome.adapters import find_adapter
from videotome.plan import MergeSettings
from videotome.analysis import cross_clip_share, splice, step_origins
from videotome.testbed import data
from videotome.testbed.models import ARCHITECTURES, load_checkpoint, select_frames
from videotome.testbed.settings import is_divided, operating_point

DONORS = {
    "a": "(a) same digit, other background",
    "b": "(b) other digit, same background",
    "c": "(c) other digit, other background",
    "self": "itself (upper reference)",
    "constant": "constant grey (lower reference)",
}
GREY = 128


def donor_clips(count: int, seed: int) -> dict[str, torch.Tensor]:
    """Each donor's (count, 16, 3, H, W) uint8 video for the first ``count`` validation clips (see the module)."""
    full = data.validation_set(data.VALIDATION_SIZE)
    sources = full.head(count)
    images, targets = data._digits()
    pool = data.split_indices("val")
    rng = np.random.default_rng(seed)
    noun, verb = full.noun.numpy(), full.verb.numpy()
    same, other, digits = [], [], []
    for index in range(count):
        candidates = (np.arange(len(full)) != index) & (verb != verb[index])
        same.append(rng.choice(np.flatnonzero(candidates & (noun == noun[index]))))
        other.append(rng.choice(np.flatnonzero(candidates & (noun != noun[index]))))
        digits.append(rng.choice(pool[targets[pool] != noun[index]]))
    rerendered = data.generate(
        "val", data.VALIDATION_SIZE, data.VALIDATION_SEED,
        digits=np.concatenate([digits, full.digit_index.numpy()[count:]]),
    ).head(count)
    assert (rerendered.noun != sources.noun).all() and torch.equal(rerendered.track, sources.track)
    return {
        "source": sources.video,
        "a": full.video[same],
        "b": rerendered.video,
        "c": full.video[other],
        "self": sources.video,
        "constant": torch.full_like(sources.video, GREY),
    }


def pixels_of(video: torch.Tensor) -> torch.Tensor:
    """uint8 clips as testbed model input (``Clips.pixels``' arithmetic)."""
    return data.Clips(video, *(torch.zeros(len(video)) for _ in range(3)), torch.zeros(len(video), 1, 4)).pixels()


def tubelet_of(model: torch.nn.Module) -> int:
    """Frames per time step: the config's tubelet size (ViViT: its first entry), 1 without one (TimeSformer)."""
    tubelet = getattr(model.config, "tubelet_size", 1)
    return int(tubelet[0] if isinstance(tubelet, (list, tuple)) else tubelet)


def truncated(settings: MergeSettings, layers: int, depth: int) -> MergeSettings:
    """The operating point's merging in the first ``depth`` layers only: its source map is the operating point's
    after layer ``depth`` (what the layers before it merge does not depend on the layers after)."""
    r = settings.r
    return replace(settings, r=0, schedule=tuple([r] * depth + [0] * (layers - depth)))


def shares(
    arch: str, videos: dict[str, torch.Tensor], depths: list[int], batch: int, progress: tqdm
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[int, int]]:
    """Per depth and donor, the (clips,) cross-clip shares of ``arch`` after that many layers of merging at the
    operating point; and per depth the tokens left (per clip, class token included)."""
    model = load_checkpoint(arch)
    settings = operating_point(model, arch)
    layers = len(find_adapter(model).layers(model))
    every = tubelet_of(model)
    grid = videotome.token_grid(model)
    source = select_frames(model, pixels_of(videos["source"]))
    donors = {name: select_frames(model, pixels_of(videos[name])) for name in DONORS}
    out, tokens = {}, {}
    for depth in depths:
        videotome.patch(model, truncated(settings, layers, depth), trace_source=True)
        tokens[depth] = videotome.plan(model).steps()[-1].tokens_out
        out[depth] = {}
        for name, donor in donors.items():
            values = []
            for start in range(0, len(source), batch):
                chunk = slice(start, start + batch)
                pairs = [splice(s, d, every) for s, d in zip(source[chunk], donor[chunk])]
                frames = torch.stack([frames for frames, _ in pairs])
                origins = step_origins(pairs[0][1], every)
                assert (origins != 2).all()
                with torch.inference_mode():
                    model(pixel_values=frames)
                values.append(cross_clip_share(videotome.sources(model), grid, origins))
                progress.update(len(frames))
            out[depth][name] = torch.cat(values).double()
    return out, tokens


def cell(values: torch.Tensor) -> str:
    return f"{values.mean():.3f} ± {values.std():.3f} ({values.median():.3f})"


def table(results: dict[str, dict[int, dict[str, torch.Tensor]]], tokens: dict[str, dict[int, int]]) -> str:
    depths = list(next(iter(results.values())))
    lines = [
        "| model | donor | " + " | ".join(f"after {depth} layers" for depth in depths) + " |",
        "|---|---|" + "---|" * len(depths),
    ]
    for arch, per_depth in results.items():
        if is_divided(arch):
            lines.append(f"| {arch} | every donor and reference: largest share of any clip | "
                         + " | ".join(f"{max(float(v.max()) for v in per_depth[d].values()):.3f}" for d in depths)
                         + " |")
            continue
        lines.append(f"| {arch} | tokens left | " + " | ".join(str(tokens[arch][d]) for d in depths) + " |")
        for name, label in DONORS.items():
            lines.append(f"| {arch} | {label} | " + " | ".join(cell(per_depth[d][name]) for d in depths) + " |")
        for first, second in (("b", "a"), ("b", "c"), ("a", "c")):
            gaps = [per_depth[d][first] - per_depth[d][second] for d in depths]
            lines.append(
                f"| {arch} | ({first}) - ({second}), per clip; share of clips > 0 | "
                + " | ".join(f"{gap.mean():+.3f} ± {gap.std():.3f}; {(gap > 0).double().mean():.0%}" for gap in gaps)
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=128, help="source clips: the first N validation clips")
    parser.add_argument("--models", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--depths", nargs="+", type=int, default=[3, 6, 9, 12],
                        help="read the source map after this many layers of the operating point's merging")
    parser.add_argument("--seed", type=int, default=0, help="seed of the donor choice")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = donor_clips(args.clips, args.seed)
    results, tokens = {}, {}
    with tqdm(total=len(args.models) * len(args.depths) * len(DONORS) * args.clips, unit="clip") as progress:
        for arch in args.models:
            results[arch], tokens[arch] = shares(arch, videos, args.depths, args.batch, progress)
    print(
        f"Cross-clip share, merging at the operating point, {args.clips} source clips, donor seed {args.seed}: "
        "mean ± std (median) over clips\n"
    )
    print(table(results, tokens))


if __name__ == "__main__":
    main()
