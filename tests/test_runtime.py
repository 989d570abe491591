"""The runtime's host allocator setting: on CPU, freed activations stay mapped for the next step."""

from __future__ import annotations

import subprocess
import sys

from cnnlab.runtime import Runtime

FAULTS_PER_STEP = """
import resource, statistics, sys, torch
from cnnlab.runtime import Runtime

def faults_per_step() -> float:
    faults = []
    for _ in range(20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(64 * 2**20 // 4).sum()  # a 64 MiB activation, made and freed, as in a training step
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(faults)

default = faults_per_step()
with Runtime(device="cpu", hold_freed_memory=sys.argv[1]):
    held = faults_per_step()
print(default, held)
"""


def faults(setting: str) -> tuple[float, float]:
    """The median page faults of a step, by default and with the setting. The median, because glibc's heap takes
    a few steps to settle: until it holds a free block the step's block fits in, a step faults a new one in."""
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, setting], capture_output=True, text=True, check=True)
    default, held = map(float, out.stdout.split())
    return default, held


def test_on_cpu_freed_memory_is_held_for_reuse_instead_of_faulted_in_again() -> None:
    default, held = faults("auto")
    pages = 64 * 2**20 / 4096
    assert default > pages / 2  # glibc's default: each 64 MiB block is mapped afresh and faulted in page by page
    assert held < default / 4  # once the heap has settled, a step reuses a held block


def test_switched_off_the_allocator_keeps_glibc_s_behaviour() -> None:
    default, held = faults("false")
    assert held > default / 2
    assert not Runtime(device="cpu", hold_freed_memory=False).hold_freed_memory
