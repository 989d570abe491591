"""Run recipes end to end, once per seed each, side by side on this machine, and report when each reaches
target test accuracies, its final test accuracy and the wall time of the whole process.

  python benchmarks/time_to_accuracy.py experiment=cpu_fast --versus experiment=cpu_fast_v1 --seeds 0,1,2

Each run is a real `python -m cnnlab.run <overrides> seed=<k>` in its own run dir under
outputs/time_to_accuracy/, evaluated every --eval-every epochs so the crossings are seen (the evaluations'
time counts too). The accuracy reported as the result is the final epoch's test accuracy: no test figure
selects anything. With --versus, the runs alternate between the recipes, so both meet the same machine load.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.track.metrics import read_metrics
from cnnlab.track.provenance import machine

ROOT = Path(__file__).resolve().parents[1]


def run_seed(overrides: list[str], seed: int, eval_every: int | None, run_dir: Path) -> dict:
    extra = [f"trainer.eval_every={eval_every}"] if eval_every else []
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab.run", *overrides, f"seed={seed}", *extra, "logger=none",
                    f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    epochs = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]
    return {"seed": seed, "wall": wall, "epochs": epochs, "dir": run_dir}


def report(name: str, results: list[dict], targets: list[float]) -> dict:
    print(f"### {name}\n")
    print("| seed | " + " | ".join(f"s to {t:.0%}" for t in targets) + " | final test acc | wall s (whole process) |")
    print("|---:|" + "---:|" * (len(targets) + 2))
    for res in results:
        seconds, cells = 0.0, {}
        for r in res["epochs"]:
            seconds += r["epoch_seconds"]
            for t in targets:
                if r.get("test_acc", 0) >= t and t not in cells:
                    cells[t] = f"{seconds:.0f} (ep {r['epoch']})"
        print(f"| {res['seed']} | " + " | ".join(cells.get(t, "-") for t in targets)
              + f" | {100 * res['epochs'][-1]['test_acc']:.2f} | {res['wall']:.0f} |")
    finals = [100 * res["epochs"][-1]["test_acc"] for res in results]
    walls = [res["wall"] / 60 for res in results]
    spread = f" ± {statistics.stdev(finals):.2f}" if len(finals) > 1 else ""
    print(f"\nfinal test accuracy {statistics.fmean(finals):.2f}{spread} % over {len(finals)} seed(s); "
          f"{statistics.fmean(walls):.1f} min wall per run (max {max(walls):.1f})\n")
    return {"acc": statistics.fmean(finals), "wall": statistics.fmean(walls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="cnnlab.run overrides, e.g. experiment=cpu_fast")
    parser.add_argument("--versus", nargs="*", default=None, help="a baseline recipe's overrides, run alternately")
    parser.add_argument("--targets", default="0.85,0.88,0.90")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--eval-every", type=int, default=None, help="default: each recipe's own")
    args = parser.parse_args()

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    recipes = {" ".join(args.overrides): args.overrides}
    if args.versus is not None:
        recipes[" ".join(args.versus)] = args.versus
    print(f"# time to accuracy, {stamp}\n# {machine()}\n")
    results: dict[str, list[dict]] = {name: [] for name in recipes}
    for seed in map(int, args.seeds.split(",")):
        for i, (name, overrides) in enumerate(recipes.items()):
            run_dir = ROOT / "outputs" / "time_to_accuracy" / stamp / f"recipe{i}_seed{seed}"
            results[name].append(run_seed(overrides, seed, args.eval_every, run_dir))
    targets = [float(t) for t in args.targets.split(",")]
    summary = {name: report(name, res, targets) for name, res in results.items()}
    if len(summary) == 2:
        (a, ra), (b, rb) = summary.items()
        print(f"{a}: {ra['acc']:.2f} % in {ra['wall']:.1f} min; {b}: {rb['acc']:.2f} % in {rb['wall']:.1f} min; "
              f"wall-time ratio {ra['wall'] / rb['wall']:.2f}")


if __name__ == "__main__":
    main()
