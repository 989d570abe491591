"""How long one TAB takes: `cnnlab-run -sc query=bash` completing a config name, as the shell asks it, beside the
same completion with torch imported first (what the entry point cost while it imported torch). Median of N runs.

  python benchmarks/completion.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

LINE = "cnnlab-run model=vgg1"
COMPLETE = ("import sys, runpy; sys.argv = ['cnnlab-run', '-sc', 'query=bash']; "
            "runpy.run_module('cnnlab.run', run_name='__main__')")


def seconds(code: str, runs: int) -> tuple[float, str]:
    env = {**os.environ, "COMP_LINE": LINE, "COMP_POINT": str(len(LINE))}
    times, out = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from cnnlab.track.provenance import machine

    lazy, choices = seconds(COMPLETE, args.runs)
    eager, _ = seconds("import torch; " + COMPLETE, args.runs)
    assert "model=vgg16" in choices.split(), choices
    print(f"{machine()}\nTAB completion of '{LINE}' (median of {args.runs}):")
    print(f"  cnnlab-run (no torch import)  {lazy:.2f} s")
    print(f"  with torch imported first     {eager:.2f} s  (baseline: the entry point before it loaded lazily)")


if __name__ == "__main__":
    main()
