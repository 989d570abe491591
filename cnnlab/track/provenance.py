"""Where a figure came from: the code version (git commit, and whether the work tree had uncommitted changes)
and the machine (CPU or GPU, cores, torch), recorded in every run's summary and printed by every benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def git_state(where: str | Path) -> dict[str, str | bool | None]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def machine() -> str:
    """The CPU (or GPU) model, the cores, torch's version and threads, in one line."""
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} x {torch.cuda.device_count()}"
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")] if cpuinfo.exists() else []
        device = names[0] if names else platform.processor() or platform.machine()
    return f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
