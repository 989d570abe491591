"""Checkpoints: atomic writes, safe loading, clear errors, and exact resume after a real SIGKILL."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SYNTH, TINY, make_cfg

from cnnlab import CnnlabError
from cnnlab.atomic import atomic_save
from cnnlab.run import train
from cnnlab.track.metrics import read_metrics
from cnnlab.train.checkpoint import load_checkpoint

QUICK = [*TINY, *SYNTH, "logger=none", "trainer.batch_size=64"]


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"model": {"w": torch.ones(3)}}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # "can't pickle local object"
        atomic_save({"model": {"w": lambda: None}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_pickle_with_a_code_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(CnnlabError, match="refused by the weights-only loader"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_reported_in_one_line(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path / "run")
    data = (tmp_path / "run" / "last.pt").read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnlabError, match=r"checkpoint .*broken\.pt is truncated or corrupt") as err:
        load_checkpoint(broken)
    assert "\n" not in str(err.value)


def test_checkpoint_of_another_architecture_is_refused_before_training(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path / "a")
    other = make_cfg(*QUICK, "model.cfg=[8,M,16,M]", "trainer.epochs=2", f"trainer.resume={tmp_path}/a/last.pt")
    with pytest.raises(CnnlabError, match="does not fit the configured model"):
        train(other, tmp_path / "b")


def test_resume_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="nothing to resume: no last.pt"):
        train(make_cfg(*QUICK, "trainer.resume=auto"), tmp_path / "empty")
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path / "done")
    with pytest.raises(CnnlabError, match="has finished epoch 1; set trainer.epochs above that"):
        train(make_cfg(*QUICK, "trainer.epochs=1", "trainer.resume=auto"), tmp_path / "done")
    with pytest.raises(CnnlabError, match="holds weights only"):
        train(make_cfg(*QUICK, "trainer.epochs=2", f"trainer.resume={tmp_path}/done/best.pt"), tmp_path / "x")
    with pytest.raises(CnnlabError, match="does not exist"):
        train(make_cfg(*QUICK, f"trainer.resume={tmp_path}/nope.pt"), tmp_path / "y")


# A model whose checkpoints (about 50 MB with Adam's state) take longer to write than a training step, so that
# kills at arbitrary moments also land inside checkpoint writes.
KILL_RUN = [*TINY, "model.classifier_hidden=[2048,2048]", "dataset=synthetic", "dataset.source.train_size=320",
            "dataset.source.test_size=64", "trainer.batch_size=32", "trainer.epochs=3", "trainer.log_every=1",
            "trainer.checkpoint_every_steps=1", "trainer.deterministic=true", "logger=none"]


def _start(run_dir: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "cnnlab.run", *KILL_RUN, f"hydra.run.dir={run_dir}"]
    if resume:
        args.append("trainer.resume=auto")
    return subprocess.Popen(args, cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return max((r["step"] for r in read_metrics(path)), default=0) if path.exists() else 0


def test_sigkill_anywhere_then_resume_ends_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    proc = _start(reference, resume=False)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

    killed = tmp_path / "killed"
    kills, mid_write, mid_epoch = 0, 0, 0
    targets = [3, 10, 14, 20, 24, 27]  # 10 steps per epoch: mid-epoch, at epoch ends, in the last epoch
    for i, target in enumerate(targets):
        proc = _start(killed, resume=i > 0)
        deadline = time.monotonic() + 120
        while _steps_logged(killed) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.002 * i)  # vary the moment within the step
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_write += any(killed.glob(".last.pt.*.tmp"))
        ckpt = load_checkpoint(killed / "last.pt")  # whatever the moment, last.pt is whole
        mid_epoch += ckpt["next_batch"] != 0
    proc = _start(killed, resume=True)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

    assert kills >= 4 and mid_epoch >= 1
    assert mid_write >= 1, "no kill landed inside a checkpoint write"
    a, b = load_checkpoint(reference / "last.pt"), load_checkpoint(killed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["step"] == b["step"] == 30

    def untimed(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if "second" not in k} for r in read_metrics(run_dir / "metrics.jsonl")]

    assert untimed(reference) == untimed(killed)
