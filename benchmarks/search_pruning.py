"""What pruning saves: a 16-trial Optuna search of lr and weight decay on a short recipe, unpruned and with ASHA
(hparams_search=optuna_asha), one after the other in this run, with the same workers, sampler and seed. Then each
search's best values again with seeds 1 and 2, for the seed spread of what it found.
Prints, for each search: its best validation accuracy, the epochs its trials trained, and its wall time.

The short recipe: a small VGG (32-64-128) with SGD and a cosine lr (no warm-up: ASHA ranks trials at epochs 1 and 3,
and a warm-up still climbing there ranks them by how high their lr has got), 9 epochs of 20 batches of 256
CIFAR-10 images, validated on 2,000 held-out images.

  python benchmarks/search_pruning.py [--trials 16] [--jobs 2] [--keep DIR]
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
          "trainer.limit_train_batches=20", "trainer.limit_eval_batches=4", "data.eval_batch_size=500",
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


def again(params: dict, launch: Path) -> list[float]:
    """The best validation accuracy of the recipe with `params`, trained with seeds 1 and 2."""
    launch.mkdir()
    cnnlab("-m", *RECIPE, *[f"{k}={v}" for k, v in params.items()], "seed=1,2", cwd=launch)
    (sweep,) = (launch / "outputs" / "multirun").iterdir()
    return [json.loads((sweep / str(i) / "summary.json").read_text())["best_val_acc"] for i in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="run the searches in this dir and keep them (pictures included)")
    args = parser.parse_args()
    from cnnlab.track.provenance import machine

    search = ["hparams_search=optuna_asha", *RECIPE, f"hydra.sweeper.n_trials={args.trials}",
              f"hydra.sweeper.n_jobs={args.jobs}"]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        unpruned, asha, seeds = Path(tmp, "unpruned"), Path(tmp, "asha"), Path(tmp, "seeds")
        for d in (unpruned, asha, seeds):
            d.mkdir()
        wall = {"unpruned": cnnlab(*search, "hydra.sweeper.pruner=null", cwd=unpruned),
                "asha": cnnlab(*search, cwd=asha)}
        found = {"unpruned": outcome(unpruned), "asha": outcome(asha)}
        spread = {name: [found[name]["best_val"]] + again(found[name]["best_params"], seeds / name) for name in found}
    print(f"{machine()}\n{args.trials} trials, {args.jobs} workers; the short recipe: {' '.join(RECIPE)}\n")
    print("| search | best val acc | its values over seeds 0, 1, 2 | epochs trained | trials (complete / pruned) "
          "| wall |")
    print("|---|---:|---|---:|---|---:|")
    for name in ("unpruned", "asha"):
        f, values = found[name], spread[name]
        print(f"| {name} | {100 * f['best_val']:.2f} % | {100 * statistics.fmean(values):.2f} ± "
              f"{100 * statistics.stdev(values):.2f} % ({', '.join(f'{100 * v:.2f}' for v in values)}) | "
              f"{f['epochs']} | {f['states'].get('finished', 0)} / {f['states'].get('pruned', 0)} | "
              f"{wall[name] / 60:.1f} min |")
    for name in ("unpruned", "asha"):
        print(f"{name}'s best: {' '.join(f'{k}={v:.3g}' for k, v in found[name]['best_params'].items())}")
    print(f"ASHA: {found['asha']['epochs'] / found['unpruned']['epochs']:.2f}x the epochs, best val "
          f"{100 * (found['asha']['best_val'] - found['unpruned']['best_val']):+.2f} points")


if __name__ == "__main__":
    main()
