from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SYNTH, TINY, make_cfg

from cnnlab import CnnlabError
from cnnlab.run import train
from cnnlab.track.metrics import read_metrics
from cnnlab.train.checkpoint import load_checkpoint

QUICK = [*TINY, *SYNTH, "logger=none", "trainer.log_every=4", "trainer.batch_size=64"]


def epochs_of(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def test_a_real_training_learns_and_leaves_a_complete_run_dir(tmp_path: Path) -> None:
    acc = train(make_cfg(*QUICK, "trainer.epochs=4", "optim.lr=3e-3"), tmp_path)
    epochs = epochs_of(tmp_path)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    assert acc == epochs[-1]["test_acc"] > 0.5  # chance is 0.1
    for key in ("step", "train_acc", "test_loss", "lr", "epoch_seconds", "images_per_second", "seconds"):
        assert key in epochs[-1]
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(r["step"] % 4 == 0 for r in steps)
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "num_classes: 10" in resolved
    last, best = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(tmp_path / "best.pt")
    assert last["next_epoch"] == 5 and last["next_batch"] == 0 and last["step"] == 4 * 8 and "optimizer" in last
    assert best["best_acc"] == max(r["test_acc"] for r in epochs)
    assert last["config"]["model"]["cfg"] == [16, "M", 32, "M", 64, "M"]


def test_torchvision_loader_path_lands_in_the_same_accuracy_band(tmp_path: Path) -> None:
    tensor_acc = train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3"), tmp_path / "tensor")
    tv_acc = train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3", "dataset.loader=torchvision"),
                   tmp_path / "tv")
    assert tensor_acc > 0.4 and tv_acc > 0.4
    assert abs(tensor_acc - tv_acc) < 0.2


@pytest.mark.parametrize("recipe", [["optim=sgd", "optim.lr=0.05", "sched=cosine", "sched.warmup_epochs=1"],
                                    ["optim=adamw", "sched=onecycle"],
                                    ["optim=adam", "sched=step", "sched.milestones=[1]"]])
def test_optimizer_and_schedule_configs_train(tmp_path: Path, recipe: list[str]) -> None:
    acc = train(make_cfg(*QUICK, "trainer.epochs=2", "trainer.label_smoothing=0.1", "trainer.grad_clip=5",
                         *recipe), tmp_path)
    assert acc > 0.2


def test_resume_continues_bit_exactly(tmp_path: Path) -> None:
    common = [*QUICK, "trainer.deterministic=true", "dataset.source.train_size=256"]
    train(make_cfg(*common, "trainer.epochs=4"), tmp_path / "straight")
    train(make_cfg(*common, "trainer.epochs=2"), tmp_path / "split")
    train(make_cfg(*common, "trainer.epochs=4", "trainer.resume=auto"), tmp_path / "split")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    def untimed(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if "second" not in k} for r in epochs_of(run_dir)]

    assert untimed(tmp_path / "straight") == untimed(tmp_path / "split")


def test_existing_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CnnlabError, match="already holds last.pt.*trainer.resume=auto"):
        train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_divergence_stops_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="training diverged.*lower optim.lr"):
        train(make_cfg(*QUICK, "trainer.epochs=2", "optim=sgd", "optim.lr=1e12", "optim.momentum=0",
                       "optim.nesterov=false"), tmp_path)
    assert (tmp_path / "summary.json").exists()


def test_evaluation_every_few_epochs_and_always_at_the_end(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=3", "trainer.eval_every=2"), tmp_path)
    tested = [r["epoch"] for r in epochs_of(tmp_path) if "test_acc" in r]
    assert tested == [2, 3] and len(epochs_of(tmp_path)) == 3
