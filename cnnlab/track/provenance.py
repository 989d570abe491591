"""Where a figure came from: the code version (git commit, and whether the work tree had uncommitted changes)
and the machine (CPU or GPU, cores, torch), recorded in every run's summary and printed by every benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

import cnnlab


def git_state(where: str | Path) -> dict[str, str | bool | None]:
    """The commit checked out where `where` lies, and whether tracked files differ from it; nulls outside a repo."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def provenance(launch_dir: Path | None = None) -> dict[str, str | bool | None]:
    """Where a run came from: cnnlab's version; the git commit and dirty flag of the dir it was launched from (the
    user's project: null outside a repo); and those of cnnlab's own source where it is a checkout (null for an
    installed wheel, even one installed inside some repo)."""
    own = source_git_state()
    return {"cnnlab_version": cnnlab.__version__, **git_state(launch_dir or Path.cwd()),
            "cnnlab_git_commit": own["git_commit"], "cnnlab_git_dirty": own["git_dirty"]}


def source_git_state() -> dict[str, str | bool | None]:
    """git_state of cnnlab's own source where it is a checkout; nulls for an installed wheel, even inside a repo."""
    source = Path(cnnlab.__file__).resolve().parent
    return git_state(source) if (source.parent / ".git").exists() else {"git_commit": None, "git_dirty": None}


def version_line() -> str:
    """`cnnlab-run --version`: cnnlab's version, and its commit where it runs from a checkout."""
    own = source_git_state()
    commit = own["git_commit"]
    where = f" (git {commit[:12]}{', with uncommitted changes' if own['git_dirty'] else ''})" if commit else ""
    return f"cnnlab {cnnlab.__version__}{where}"


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
