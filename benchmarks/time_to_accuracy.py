"""Run a recipe end to end, once per seed, and report when it reaches a target test accuracy.

  python benchmarks/time_to_accuracy.py experiment=cpu_fast --target 0.85 --seeds 0,1,2

Each seed is a real `python -m cnnlab.run <overrides> seed=<k>` in its own run dir under
outputs/time_to_accuracy/, evaluated every epoch (--eval-every) so the crossing is seen. Prints the curve of each
run, then per seed: the first epoch at or above the target, the training seconds up to it, the final accuracy
and the wall time of the whole process (start-up, data, evaluations and W&B included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import machine  # noqa: E402
from cnnlab.track.metrics import read_metrics  # noqa: E402


def run_seed(overrides: list[str], seed: int, eval_every: int, run_dir: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.run", *overrides, f"seed={seed}", f"trainer.eval_every={eval_every}",
                    f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    epochs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    return {"seed": seed, "wall": wall, "epochs": epochs, "dir": run_dir}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="cnnlab.run overrides, e.g. experiment=cpu_fast")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--eval-every", type=int, default=1)
    args = parser.parse_args()

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    print(f"# time to {args.target:.0%}: {' '.join(args.overrides)}\n# {stamp}, {machine()}\n")
    results = []
    for seed in map(int, args.seeds.split(",")):
        run_dir = ROOT / "outputs" / "time_to_accuracy" / stamp / f"seed{seed}"
        res = run_seed(args.overrides, seed, args.eval_every, run_dir)
        results.append(res)
        print(f"seed {seed} ({res['dir'].relative_to(ROOT)}):")
        print("| epoch | train s (cumulative) | test acc |\n|---:|---:|---:|")
        train_s = 0.0
        for r in res["epochs"]:
            train_s += r["epoch_seconds"]
            r["train_s"] = train_s
            if "test_acc" in r:
                print(f"| {r['epoch']} | {train_s:.0f} | {100 * r['test_acc']:.2f} |")
        print()

    print("| seed | epochs to target | train s to target | final test acc | wall s (whole process) |")
    print("|---:|---:|---:|---:|---:|")
    for res in results:
        hit = next((r for r in res["epochs"] if r.get("test_acc", 0) >= args.target), None)
        reached = f"| {hit['epoch']} | {hit['train_s']:.0f} " if hit else "| not reached | - "
        print(f"| {res['seed']} {reached}| {100 * res['epochs'][-1]['test_acc']:.2f} | {res['wall']:.0f} |")
    finals = [100 * res["epochs"][-1]["test_acc"] for res in results]
    walls = [res["wall"] / 60 for res in results]
    spread = f" ± {statistics.stdev(finals):.2f}" if len(finals) > 1 else ""
    every = "every" if min(finals) >= 100 * args.target else "NOT every"
    print(f"\nfinal test accuracy {statistics.fmean(finals):.2f}{spread} % over {len(finals)} seed(s), "
          f"{statistics.fmean(walls):.1f} min wall per run (max {max(walls):.1f}); "
          f"the {args.target:.0%} target is reached by {every} seed")

if __name__ == "__main__":
    main()
