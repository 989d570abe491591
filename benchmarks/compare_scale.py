"""How long `cnnlab.compare` takes on a large sweep: copies of one real run dir, 150 by default, with the lr and
seed varied in each copy's resolved config, then the whole comparison (text, CSV, Markdown, PNG) timed.

  python benchmarks/compare_scale.py outputs/runs/<a finished run> [--runs 150]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from cnnlab.compare import main as compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--runs", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = Path(tmp) / "sweep"
        for i in range(args.runs):
            job = sweep / str(i)
            job.mkdir(parents=True)
            for name in ("metrics.jsonl", "summary.json"):
                shutil.copy(args.run_dir / name, job / name)
            config = yaml.safe_load((args.run_dir / "config_resolved.yaml").read_text())
            config["optim"]["lr"], config["seed"] = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1][i % 5], i // 5
            (job / "config_resolved.yaml").write_text(yaml.safe_dump(config))
        start = time.perf_counter()
        compare([str(sweep), "--out", tmp])
        print(f"\ncnnlab.compare on {args.runs} runs: {time.perf_counter() - start:.2f} s (text, CSV, Markdown, PNG)")


if __name__ == "__main__":
    main()
