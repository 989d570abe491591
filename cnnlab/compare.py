"""`python -m cnnlab.compare DIR [DIR ...]` (or `cnnlab-compare`): one row per distinct config across runs and
sweeps, mean ± std over seeds, sorted by best validation accuracy; written as text, CSV and Markdown, with a PNG
of the curves.

A row is named by the command-line overrides that differ between the runs, as the user typed them (each run's
.hydra/overrides.yaml: `model=vgg11_bn optim.lr=0.01`), the seed left out. Runs without that record fall back
to the resolved config keys that differ. Runs come from run dirs found under the given dirs, or from W&B with
`--wandb ENTITY/PROJECT --group GROUP` when online.

Columns: n (seeds), best val (the best validation accuracy of each run), test at best val (the test accuracy
of that same epoch: what a selected model scores), final test (the last epoch's), epochs, wall s, img/s.
Validation selects; test is only reported.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.rundir import RunDir
from cnnlab.track.metrics import read_metrics

# never what makes two configs differ: the seed (rows average over it), and where files live
IGNORED = {"seed", "data.seed", "checkpoints.resume", "cache_dir", "data.cache_dir", "data_dir"}
METRICS = (("val_acc", "validation accuracy"), ("test_acc", "test accuracy"), ("train_loss", "train loss"))


@dataclass
class Run:
    name: str
    config: dict[str, Any]  # flattened resolved config: "optim.lr" -> 0.001
    overrides: dict[str, str] | None  # "optim.lr" -> "0.01", as typed; None without Hydra's record
    epochs: list[dict[str, Any]] = field(default_factory=list)  # the epoch records, in order
    summary: dict[str, Any] = field(default_factory=dict)

    def best_val(self) -> tuple[float, float] | None:
        """(best validation accuracy, test accuracy of that epoch), or None without a validation split."""
        rated = [r for r in self.epochs if "val_acc" in r]
        if not rated:
            return None
        best = max(rated, key=lambda r: r["val_acc"])  # the first of equals, as the trainer selects
        return best["val_acc"], best["test_acc"]

    @property
    def final_test(self) -> float | None:
        tested = [r for r in self.epochs if "test_acc" in r]
        return tested[-1]["test_acc"] if tested else None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


def parse_overrides(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, _, value = line.partition("=")
        out[key.lstrip("+~")] = value
    return out


def runs_from_dirs(dirs: list[Path]) -> list[Run]:
    """Every run dir under `dirs`; a damaged one is skipped with one warning line that names its file."""
    runs = []
    for top in dirs:
        for metrics in sorted(top.rglob(RunDir(Path()).metrics.name), key=str):
            run_dir = RunDir(metrics.parent)
            if not run_dir.config.exists():
                continue
            try:
                runs.append(read_run(run_dir))
            except DamagedRun as e:
                print(f"warning: skipping the run in {run_dir.path}: {e}", file=sys.stderr)
    return runs


FIGURES = ("val_acc", "test_acc", "train_loss", "epoch_seconds", "images_per_second")  # what the table reads


class DamagedRun(Exception):
    """A run file that cannot be read, or holds what no run writes."""


def read_run(run_dir: RunDir) -> Run:
    def read(path: Path, parse: Any, kind: type) -> Any:
        try:
            value = parse(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
            raise DamagedRun(f"{path} cannot be read ({type(e).__name__})") from None
        if not isinstance(value, kind):
            raise DamagedRun(f"{path} holds a {type(value).__name__}, not a {kind.__name__}")
        return value

    overrides_file = run_dir.hydra / "overrides.yaml"
    overrides = read(overrides_file, lambda t: yaml.safe_load(t) or [], list) if overrides_file.exists() else None
    summary = read(run_dir.summary, json.loads, dict) if run_dir.summary.exists() else {}
    epochs = [r for r in read_metrics(run_dir.metrics) if isinstance(r, dict) and r.get("kind") == "epoch"]
    for record in epochs:
        figures = [record[k] for k in FIGURES if k in record]
        if not isinstance(record.get("epoch"), int) or "val_acc" in record and "test_acc" not in record or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in figures):
            raise DamagedRun(f"{run_dir.metrics}: epoch record {str(record.get('epoch'))[:20]} lacks its epoch "
                             "number, has val_acc without test_acc, or a figure that is not a finite number")
    if not isinstance(summary.get("train_seconds", 0) or 0, int | float):
        raise DamagedRun(f"{run_dir.summary}: train_seconds is not a number")
    config = read(run_dir.config, yaml.safe_load, dict)
    return Run(str(run_dir.path), flatten(config), parse_overrides([str(o) for o in overrides])
               if overrides is not None else None, epochs, summary)


def runs_from_wandb(path: str, group: str | None) -> list[Run]:
    import wandb

    runs = []
    for r in wandb.Api(timeout=30).runs(path, filters={"group": group} if group else None):
        keys = ["epoch", "val_acc", "test_acc", "train_loss", "images_per_second", "epoch_seconds"]
        epochs = [row for row in r.scan_history(keys=keys) if row.get("epoch") is not None]
        runs.append(Run(r.name, flatten({k: v for k, v in r.config.items() if not k.startswith("_")}), None, epochs,
                        dict(r.summary)))
    return runs


def labels(runs: list[Run]) -> tuple[list[str], list[str]]:
    """Each run's row label and the keys that tell the rows apart: the overrides that differ, where every run
    has Hydra's record of them, else the resolved config keys that differ."""
    by_overrides = all(r.overrides is not None for r in runs)
    values = [r.overrides if by_overrides else r.config for r in runs]
    keys = list(dict.fromkeys(k for v in values for k in v))  # in the order they were typed
    differing = [k for k in keys if k not in IGNORED and not k.startswith("hydra.")
                 and len({repr(v.get(k)) for v in values}) > 1]
    return [" ".join(f"{k}={v[k]}" if k in v else f"{k}=(default)" for k in differing) or "(all runs alike)"
            for v in values], differing


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]], dict[str, list[Run]]]:
    runs = [r for r in runs if r.final_test is not None]
    names, keys = labels(runs)
    groups: dict[str, list[Run]] = defaultdict(list)
    for name, run in zip(names, runs, strict=True):
        groups[name].append(run)
    rows = []
    for name, members in groups.items():
        selected = [r.best_val() for r in members if r.best_val() is not None]
        rows.append({"config": name, "n": len(members), "best_val": mean_std([v for v, _ in selected]),
                     "test_at_best_val": mean_std([t for _, t in selected]),
                     "final_test": mean_std([r.final_test for r in members]),
                     "epochs": max(r.epochs[-1]["epoch"] for r in members),
                     "pruned": sum(r.summary.get("status") == "pruned" for r in members),
                     "wall_s": statistics.fmean([r.summary.get("train_seconds") or
                                                 sum(e.get("epoch_seconds", 0) for e in r.epochs) for r in members]),
                     "images_per_s": statistics.fmean([statistics.fmean([e.get("images_per_second", 0)
                                                                         for e in r.epochs]) for r in members])})
    rows.sort(key=lambda row: (row["best_val"] or row["final_test"])[0], reverse=True)
    return keys, rows, groups


HEAD = ["config", "n", "best val", "test at best val", "final test", "epochs", "wall s", "img/s"]


def cells(row: dict[str, Any]) -> list[str]:
    def pct(value: tuple[float, float] | None) -> str:
        return f"{100 * value[0]:.2f} ± {100 * value[1]:.2f}" if value else "-"

    pruned = f" ({row['pruned']} pruned)" if row["pruned"] else ""  # a search stopped them early
    return [row["config"], str(row["n"]), pct(row["best_val"]), pct(row["test_at_best_val"]), pct(row["final_test"]),
            f"{row['epochs']}{pruned}", f"{row['wall_s']:.0f}", f"{row['images_per_s']:.0f}"]


def as_text(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    body = [cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" + "---:|" * (len(HEAD) - 1)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body]) + "\n"
    widths = [max(len(x) for x in col) for col in zip(HEAD, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*line) for line in [HEAD, *body]) + "\n"


def as_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["config", "n", "best_val", "best_val_std", "test_at_best_val", "test_at_best_val_std",
                     "final_test", "final_test_std", "epochs", "pruned", "wall_s", "images_per_s"])
    for r in rows:
        stats = [x for key in ("best_val", "test_at_best_val", "final_test") for x in (r[key] or ("", ""))]
        writer.writerow([r["config"], r["n"], *stats, r["epochs"], r["pruned"], f"{r['wall_s']:.1f}",
                         f"{r['images_per_s']:.1f}"])
    return buf.getvalue()


MARKERS = "osD^vP*X<>"


def plot(groups: dict[str, list[Run]], rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per metric (accuracies in percent); per row a line of the seeds' mean with its own colour and
    marker, and the std over seeds as error bars, nudged sideways per row so that equal curves stay apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {k for members in groups.values() for r in members for e in r.epochs for k in e}
    metrics = [(k, title) for k, title in METRICS if k in seen]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for i, row in enumerate(rows):
        nudge = 0.5 * (i - (len(rows) - 1) / 2) / max(len(rows), 2)  # rows spread over half an epoch
        style = dict(color=colours[i % len(colours)], marker=MARKERS[i % len(MARKERS)], markersize=5,
                     capsize=2, linewidth=1.4, elinewidth=0.9, label=f"{row['config']} (n={row['n']})")
        for ax, (key, _) in zip(axes[0], metrics, strict=True):
            scale = 100 if key.endswith("_acc") else 1
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in groups[row["config"]]:
                for e in run.epochs:
                    if key in e:
                        by_epoch[e["epoch"]].append(scale * e[key])
            xs = sorted(by_epoch)
            means = [statistics.fmean(by_epoch[x]) for x in xs]
            stds = [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) > 1 else 0.0 for x in xs]
            ax.errorbar([x + nudge for x in xs], means, yerr=stds, markevery=max(1, len(xs) // 25), **style)
    for ax, (key, title) in zip(axes[0], metrics, strict=True):
        unit = " (%)" if key.endswith("_acc") else ""
        ax.set(xlabel="epoch", ylabel=f"{title}{unit}", title=f"{title}: mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnlab-compare", description=__doc__,
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
        print(f"error: no finished runs with test accuracy found in {' '.join(map(str, args.dirs))}",
              file=sys.stderr)
        return 1
    differing = f", differing in: {', '.join(keys)}" if keys else ""
    print(f"{sum(r['n'] for r in rows)} runs, {len(rows)} configs{differing}")
    print(as_text(rows), end="")
    out = args.out or (args.dirs[0] if args.dirs else Path("."))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --out {out} cannot be a dir of results ({e.strerror}): give a dir", file=sys.stderr)
        return 1
    (out / "compare.csv").write_text(as_csv(rows))
    (out / "compare.md").write_text(as_text(rows, markdown=True))
    plot(groups, rows, out / "compare.png")
    print(f"-> {out / 'compare.csv'}, compare.md, compare.png")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
