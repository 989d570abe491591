"""`python -m cnnlab.compare DIR [DIR ...]`: one row per distinct config across runs and sweeps, mean ± std
over seeds, sorted by test accuracy; written as text, CSV and Markdown, with a PNG of the curves.

A row's config is what differs between the runs' resolved configs (the seed excluded). Runs come from run
dirs found under the given dirs (metrics.jsonl + config_resolved.yaml), or from W&B with `--wandb
ENTITY/PROJECT --group GROUP` when online.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.track.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics

IGNORED = ("seed", "trainer.resume", "cache_dir", "data_dir")  # key suffixes that never make two configs differ


@dataclass
class Run:
    name: str
    config: dict[str, Any]  # flattened: "optim.lr" -> 0.001
    epochs: list[dict[str, Any]] = field(default_factory=list)  # the epoch records, in order
    seconds: float | None = None

    @property
    def tested(self) -> list[dict[str, Any]]:
        return [r for r in self.epochs if "test_acc" in r]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


def runs_from_dirs(dirs: list[Path]) -> list[Run]:
    runs = []
    for top in dirs:
        for metrics in sorted(top.rglob(METRICS_FILE), key=lambda p: str(p)):
            run_dir = metrics.parent
            config_file = run_dir / "config_resolved.yaml"
            if not config_file.exists():
                continue
            summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).exists() else {}
            epochs = [r for r in read_metrics(metrics) if r.get("kind") == "epoch"]
            runs.append(Run(str(run_dir), flatten(yaml.safe_load(config_file.read_text())), epochs,
                            summary.get("train_seconds")))
    return runs


def runs_from_wandb(path: str, group: str | None) -> list[Run]:
    import wandb

    runs = []
    for r in wandb.Api(timeout=30).runs(path, filters={"group": group} if group else None):
        keys = ["epoch", "test_acc", "test_loss", "train_loss", "train_acc", "images_per_second", "epoch_seconds"]
        epochs = [row for row in r.scan_history(keys=keys) if row.get("epoch") is not None]
        runs.append(Run(r.name, flatten({k: v for k, v in r.config.items() if not k.startswith("_")}), epochs,
                        r.summary.get("train_seconds")))
    return runs


def differing_keys(runs: list[Run]) -> list[str]:
    keys = sorted({k for r in runs for k in r.config})
    return [k for k in keys if not k.endswith(IGNORED) and len({repr(r.config.get(k)) for r in runs}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]], dict[str, list[Run]]]:
    keys = differing_keys(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.tested:
            groups[" ".join(f"{k}={run.config.get(k)}" for k in keys) or "(all runs alike)"].append(run)
    rows = []
    for label, members in groups.items():
        final = mean_std([r.tested[-1]["test_acc"] for r in members])
        best = mean_std([max(e["test_acc"] for e in r.tested) for r in members])
        rows.append({"config": label, "n": len(members), "final_acc": final[0], "final_std": final[1],
                     "best_acc": best[0], "best_std": best[1],
                     "epochs": max(r.epochs[-1]["epoch"] for r in members),
                     "wall_s": statistics.fmean([r.seconds or sum(e.get("epoch_seconds", 0) for e in r.epochs)
                                                 for r in members]),
                     "images_per_s": statistics.fmean([statistics.fmean([e.get("images_per_second", 0)
                                                                         for e in r.epochs]) for r in members])})
    rows.sort(key=lambda row: row["final_acc"], reverse=True)
    return keys, rows, groups


def as_text(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["config", "n", "final test acc", "best test acc", "epochs", "wall s", "img/s"]
    body = [[r["config"], str(r["n"]), f"{100 * r['final_acc']:.2f} ± {100 * r['final_std']:.2f}",
             f"{100 * r['best_acc']:.2f} ± {100 * r['best_std']:.2f}", str(r["epochs"]), f"{r['wall_s']:.0f}",
             f"{r['images_per_s']:.0f}"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [head, *body]) + "\n"


def as_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["config"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(groups: dict[str, list[Run]], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        members = groups[row["config"]]
        for ax, key in ((acc_ax, "test_acc"), (loss_ax, "train_loss")):
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in members:
                for e in run.epochs:
                    if key in e:
                        by_epoch[e["epoch"]].append(e[key])
            xs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[x]) for x in xs]
            stds = [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
            (line,) = ax.plot(xs, means, label=f"{row['config'][:60]} (n={row['n']})")
            ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
    acc_ax.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (mean ± std over seeds)")
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="train loss")
    acc_ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnlab.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", type=Path, help="sweep dirs or run dirs (searched recursively)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead (online)")
    parser.add_argument("--group", help="with --wandb: only this group (a sweep)")
    parser.add_argument("--out", type=Path, help="where compare.{csv,md,png} go (default: the first dir)")
    args = parser.parse_args(argv)
    if not args.dirs and not args.wandb:
        parser.error("give at least one dir, or --wandb ENTITY/PROJECT")
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.error(f"not a directory: {', '.join(missing)}")
    runs = runs_from_wandb(args.wandb, args.group) if args.wandb else runs_from_dirs(args.dirs)
    keys, rows, groups = table(runs)
    if not rows:
        print(f"error: no finished runs with test accuracy found in {' '.join(map(str, args.dirs))}", file=sys.stderr)
        return 1
    print(f"{len(runs)} runs, {len(rows)} configs" + (f", differing in: {', '.join(keys)}" if keys else ""))
    print(as_text(rows), end="")
    out = args.out or (args.dirs[0] if args.dirs else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(as_csv(rows))
    (out / "compare.md").write_text(as_text(rows, markdown=True))
    plot(groups, rows, out / "compare.png")
    print(f"-> {out / 'compare.csv'}, compare.md, compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
