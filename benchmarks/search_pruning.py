"""What pruning saves: a 16-trial Optuna search of lr and weight decay on a short recipe, unpruned and with ASHA
(hparams_search=optuna_asha), with the same workers, each with sampler seeds 0, 1 and 2 (unpruned and ASHA in
turn, all in this run), for the seed spread of what a search finds. Prints, for each search and seed: its best
validation accuracy, the epochs its trials trained, and its wall time.

The short recipe: a small VGG (32-64-128) with SGD and a cosine lr (no warm-up: ASHA ranks trials at epochs 1 and 3,
and a warm-up still climbing there ranks them by how high their lr has got), 9 epochs of 20 batches of 256
CIFAR-10 images, validated on 2,000 held-out images.

  python benchmarks/search_pruning.py [--trials 16] [--jobs 2] [--seeds 0,1,2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["model=vgg11_bn", "model.cfg=[32,M,64,M,128,M]", "model.classifier_hidden=[]",
          "model.classifier_dropout=0.0", "optim=sgd", "sched=cosine", "data.batch_size=256", "trainer.epochs=9",
          "trainer.limits.train_batches=20", "trainer.limits.eval_batches=4", "data.eval_batch_size=500",
          "dataset.val_size=2000", "logger=none"]


def cnnlab(*args: str, cwd: Path) -> float:
    """Run `python -m cnnlab.run args` in `cwd`; its wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.run", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def outcome(launch: Path) -> dict:
    """Best validation accuracy, epochs trained and trial states of the search run in `launch`."""
    (sweep,) = (launch / "outputs" / "multirun").iterdir()
    runs = sorted(sweep.glob("trial_*"))
    best, epochs, states = 0.0, 0, {}
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        best = max(best, summary["best_val_acc"])
        epochs += sum(1 for line in (run / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line).get("kind") == "epoch")
        status = summary.get("status", "?")
        states[status] = states.get(status, 0) + 1
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    return {"best_val": best, "epochs": epochs, "trials": len(runs), "states": states,
            "best_params": results["best_params"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2", help="the samplers' seeds: one search of each kind per seed")
    parser.add_argument("--keep", type=Path, help="run the searches in this dir and keep them (pictures included)")
    args = parser.parse_args()
    from cnnlab.track.provenance import machine

    seeds = [int(seed) for seed in args.seeds.split(",")]
    search = ["hparams_search=optuna_asha", *RECIPE, f"hydra.sweeper.n_trials={args.trials}",
              f"hydra.sweeper.n_jobs={args.jobs}"]
    kinds = {"unpruned": ["hydra.sweeper.pruner=null"], "ASHA": []}
    found: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for kind, extra in kinds.items():
                launch = Path(args.keep or scratch, f"{kind}_{seed}")
                launch.mkdir()
                wall = cnnlab(*search, *extra, f"hydra.sweeper.sampler.seed={seed}", cwd=launch)
                found[kind].append({**outcome(launch), "wall": wall, "seed": seed})
    print(f"{machine()}\n{args.trials} trials, {args.jobs} workers; the short recipe: {' '.join(RECIPE)}\n")
    print("| search | sampler seed | best val acc | epochs trained | trials (complete / pruned) | wall | best values |")
    print("|---|---:|---:|---:|---|---:|---|")
    for kind, runs in found.items():
        for f in runs:
            values = " ".join(f"{k.split('.')[-1]} {v:.3g}" for k, v in f["best_params"].items())
            print(f"| {kind} | {f['seed']} | {100 * f['best_val']:.2f} % | {f['epochs']} | "
                  f"{f['states'].get('finished', 0)} / {f['states'].get('pruned', 0)} | {f['wall'] / 60:.1f} min | "
                  f"{values} |")
    print()
    for kind, runs in found.items():
        best = [100 * f["best_val"] for f in runs]
        spread = f" ± {statistics.stdev(best):.2f}" if len(best) > 1 else ""
        print(f"{kind}: best val {statistics.fmean(best):.2f}{spread} % (range {min(best):.2f}-{max(best):.2f}), "
              f"{sum(f['epochs'] for f in runs)} epochs, {sum(f['wall'] for f in runs) / 60:.1f} min")
    ratio = sum(f["epochs"] for f in found["ASHA"]) / sum(f["epochs"] for f in found["unpruned"])
    wall = sum(f["wall"] for f in found["ASHA"]) / sum(f["wall"] for f in found["unpruned"])
    print(f"ASHA: {ratio:.2f}x the epochs, {wall:.2f}x the wall time")


if __name__ == "__main__":
    main()
