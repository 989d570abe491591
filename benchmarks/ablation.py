"""Ablate an airbench-style recipe: run it, then once more per method with that method removed, and print one
table row per method: final test accuracy (mean over seeds), its change against the full recipe, and the wall
time of the whole process.

  python benchmarks/ablation.py experiment=cpu_fast trainer.epochs=4 --seeds 0,1

A shorter budget (trainer.epochs) fits the ablation into fewer hours; every row runs at the same budget and
seeds, one right after the other. `--only` picks methods by their row names' first words.
"""

from __future__ import annotations

import argparse
import statistics
import time

from time_to_accuracy import ROOT, run_seed  # a sibling script: benchmarks/ is on sys.path

from cnnlab.track.provenance import machine

REMOVALS = {  # method -> the overrides that take it out of the recipe
    "whitening stem": ["model.whiten=false", "trainer.whiten_bias.epochs=null"],
    "dirac init (PyTorch's default)": ["model.style.init=pytorch_default"],
    "GELU (ReLU)": ["model.style.activation=relu"],
    "BatchNorm options (PyTorch's defaults)": ["model.style.bn_momentum=0.1", "model.style.bn_eps=1e-5",
                                               "model.style.bn_scale=true"],
    "BatchNorm-bias parameter group": ["trainer.param_groups=[]"],
    "Lookahead": ["trainer.ema.every=0"],
    "alternating flip (random flip)": ["augment.flip=true"],
    "reflect padding (zeros)": ["augment.padding_mode=zeros"],
    "label smoothing": ["trainer.loss.label_smoothing=0"],
    "output scale": ["model.output_scale=1.0"],
    "translated TTA views (mirror only)": ["trainer.tta=flip"],
    "TTA": ["trainer.tta=none"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="the recipe, e.g. experiment=cpu_fast trainer.epochs=4")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default=None, help="comma-separated first words of the methods to remove")
    args = parser.parse_args()

    wanted = args.only.split(",") if args.only else None
    rows = {"(nothing: the recipe)": []} | {m: o for m, o in REMOVALS.items()
                                             if wanted is None or m.split()[0] in wanted}
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    print(f"# ablation of `{' '.join(args.overrides)}`, {stamp}\n# {machine()}\n")
    print("| removed | final test acc | vs the recipe | wall min per run |\n|---|---:|---:|---:|")
    base = None
    for i, (method, removal) in enumerate(rows.items()):
        runs = [run_seed([*args.overrides, *removal], seed, None,
                         ROOT / "outputs" / "ablation" / stamp / f"row{i}_seed{seed}")
                for seed in map(int, args.seeds.split(","))]
        acc = statistics.fmean(100 * r["epochs"][-1]["test_acc"] for r in runs)
        wall = statistics.fmean(r["wall"] / 60 for r in runs)
        base = acc if base is None else base
        print(f"| {method} | {acc:.2f} | {acc - base:+.2f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
