"""Real trainings, in process: what a run leaves, selection on validation only, exact resume, the NaN guard,
and nonsense refused before anything is written."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import torch
from conftest import QUICK, epochs_of, make_cfg, snapshot, untimed

from cnnlab import CnnlabError, Interrupted
from cnnlab.data.loader import TensorLoader
from cnnlab.evaluate import evaluate
from cnnlab.job import train
from cnnlab.track.metrics import read_metrics
from cnnlab.train import checkpoint


def test_a_real_training_learns_and_leaves_a_complete_run_dir(tmp_path: Path) -> None:
    objective = train(make_cfg(*QUICK, "trainer.epochs=4", "optim.lr=3e-3"), tmp_path)
    epochs = epochs_of(tmp_path)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    assert epochs[-1]["test_acc"] > 0.5  # chance is 0.1
    for key in ("step", "train_acc", "val_loss", "val_acc", "test_loss", "lr", "epoch_seconds", "images_per_second"):
        assert key in epochs[-1]
    steps = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(r["step"] % 4 == 0 for r in steps)
    resolved = (tmp_path / "config_resolved.yaml").read_text()
    assert "${" not in resolved and "num_classes: 10" in resolved
    last = checkpoint.load(tmp_path / "last.pt", "last")
    assert last["progress"]["epoch"] == 5 and last["progress"]["batch"] == 0 and last["progress"]["step"] == 4 * 8
    assert last["config"]["model"]["cfg"] == [16, "M", 32, "M", 64, "M"] and len(last["classes"]) == 10
    assert objective == max(r["val_acc"] for r in epochs)  # a run returns its best validation accuracy


def test_best_pt_is_the_best_validation_epoch_and_test_selects_nothing(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=5", "optim=sgd", "optim.lr=0.05", "dataset.val_size=128"), tmp_path)
    epochs = epochs_of(tmp_path)
    best_epoch = max(epochs, key=lambda r: r["val_acc"])  # the first of equals
    best = checkpoint.load(tmp_path / "best.pt", "best")
    assert best["progress"]["epoch"] == best_epoch["epoch"]
    assert best["progress"]["best_val_acc"] == best_epoch["val_acc"]
    assert best["progress"]["test_acc_at_best"] == best_epoch["test_acc"]
    # the weights in best.pt are that epoch's: they score its validation accuracy again
    again = evaluate(make_cfg(f"checkpoint={tmp_path / 'best.pt'}", "split=val", config_name="evaluate"),
                     tmp_path / "eval")
    assert again["acc"] == pytest.approx(best_epoch["val_acc"], abs=1e-9)
    summary = (tmp_path / "summary.json").read_text()
    assert f'"best_epoch": {best_epoch["epoch"]}' in summary and '"test_acc_at_best_val"' in summary


def test_the_validation_split_is_held_out_of_train_stratified_and_the_same_for_every_seed(tmp_path: Path) -> None:
    from cnnlab.config import build

    def data(seed: int):
        cfg = make_cfg(*QUICK, f"seed={seed}", "dataset.val_size=100")
        return build(cfg.data, "data")(torch.device("cpu"), 0, 1, False)

    a, b = data(0), data(1)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert len(a.val.labels) == 100 and len(a.train.labels) == 512 - 100
    counts = torch.bincount(a.val.labels, minlength=10).float()
    share = torch.bincount(torch.cat([a.train.labels, a.val.labels]), minlength=10).float() / 512
    assert torch.all((counts - 100 * share).abs() <= 1)  # each class gives its share, to one image
    train_rows = {tuple(x.flatten().tolist()) for x in a.train.images}
    assert not any(tuple(x.flatten().tolist()) in train_rows for x in a.val.images)


def test_objective_can_be_the_final_test_accuracy_without_a_validation_split(tmp_path: Path) -> None:
    value = train(make_cfg(*QUICK, "trainer.epochs=2", "dataset.val_size=0", "objective=final_test_acc"), tmp_path)
    epochs = epochs_of(tmp_path)
    assert value == epochs[-1]["test_acc"] and "val_acc" not in epochs[-1]
    assert not (tmp_path / "best.pt").exists()  # nothing to select on


@pytest.mark.parametrize("loader", ["tensor", pytest.param("torchvision", marks=pytest.mark.slow)])
def test_resume_continues_bit_exactly(tmp_path: Path, loader: str) -> None:
    common = [*QUICK, "runtime.deterministic=true", "dataset.source.train_size=256", f"data.loader={loader}"]
    train(make_cfg(*common, "trainer.epochs=3"), tmp_path / "straight")
    train(make_cfg(*common, "trainer.epochs=1"), tmp_path / "split")
    train(make_cfg(*common, "trainer.epochs=3", "checkpoints.resume=auto"), tmp_path / "split")
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(epochs_of(tmp_path / "straight")) == untimed(epochs_of(tmp_path / "split"))


@pytest.mark.slow
def test_torchvision_loader_path_lands_in_the_same_accuracy_band(tmp_path: Path) -> None:
    tensor = train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3"), tmp_path / "tensor")
    tv = train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3", "data.loader=torchvision"), tmp_path / "tv")
    assert tensor > 0.4 and tv > 0.4 and abs(tensor - tv) < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [["optim=sgd", "optim.lr=0.05", "sched=cosine", "sched.warmup_epochs=1"],
                                    ["optim=adamw", "sched=onecycle"],
                                    ["optim=muon", "sched=onecycle", "sched.pct_start=0", "sched.start_ratio=1"],
                                    ["optim=sgd_decoupled", "sched=onecycle"],
                                    ["optim=adam", "sched=step", "sched.milestones=[1]"]])
def test_optimizer_and_schedule_configs_train(tmp_path: Path, recipe: list[str]) -> None:
    assert train(make_cfg(*QUICK, "trainer.epochs=2", "trainer.loss.label_smoothing=0.1", "trainer.grad_clip=5",
                          *recipe), tmp_path) > 0.2


@pytest.mark.slow
def test_evaluation_every_few_epochs_and_always_at_the_end(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=3", "trainer.eval_every=2"), tmp_path)
    assert [r["epoch"] for r in epochs_of(tmp_path) if "test_acc" in r] == [2, 3]


# -------------------------------------------------------------------------------------------- divergence
DIVERGE = [*QUICK, "trainer.epochs=3", "optim=sgd", "checkpoints.every_steps=1", "trainer.log_every=1"]
# Only the convs step (1e22 x 1e-22 = 1 for BatchNorm and the head, no weight decay): BatchNorm makes the loss blind
# to their scale, so step 1 leaves them about 1e20 times larger but finite, and step 2's batch variance overflows
# into the running_var buffers while the normalised activations, and with them the loss, stay finite. That holds
# for any kernel's rounding, where an lr that merely grows the weights until something overflows does not.
SCALE_BLIND = ["optim.lr=1e22", "optim.weight_decay=0", "trainer.param_groups=[{params:norm,lr_scale:1e-22,"
               "weight_decay_scale:1},{params:linear,lr_scale:1e-22,weight_decay_scale:1}]"]


@pytest.mark.parametrize("case,what", [(["optim.lr=1e6"], "hold NaN or inf|the train loss is"),
                                       (SCALE_BLIND, r"weight and buffer tensors hold NaN or inf "
                                                     r"\(features\.1\.running_var\)")],
                         ids=["nan-within-steps", "inf-batchnorm-finite-loss"])
def test_divergence_stops_the_run_and_no_checkpoint_holds_nan_or_inf(tmp_path: Path, case: list[str],
                                                                      what: str) -> None:
    with pytest.raises(CnnlabError, match="training diverged at epoch .* the last finite checkpoint is .*last.pt; "
                                          "lower optim.lr") as err:
        train(make_cfg(*DIVERGE, *case), tmp_path)
    assert "\n" not in str(err.value) and re.search(what, str(err.value))
    for name in ("last.pt", "best.pt"):
        if (tmp_path / name).exists():
            assert not any(not t.isfinite().all() for t in checkpoint.load(tmp_path / name)["model"].values()
                           if t.is_floating_point()), name
    assert '"status": "failed"' in (tmp_path / "summary.json").read_text()


# ------------------------------------------------------------------------------- refused before writing
def test_existing_run_dir_is_never_overwritten(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CnnlabError, match="already holds last.pt: continue it with checkpoints.resume=auto"):
        train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("override,message", [
    ("model.cfg=[8,M,16,M]", r"was trained with model.cfg=\[16, 'M', 32, 'M', 64, 'M'\], this run has "
                             r"model.cfg=\[8, 'M', 16, 'M'\]"),
    pytest.param("optim=sgd", "was trained with optimizer cnnlab.train.optimizers.adam, this run configures "
                              "cnnlab.train.optimizers.sgd",
                 marks=pytest.mark.slow),
    pytest.param("trainer.epochs=1", "nothing to train: .* has finished epoch 1; set trainer.epochs above that",
                 marks=pytest.mark.slow),
])
def test_a_refused_resume_leaves_the_run_dir_byte_for_byte_unchanged(tmp_path: Path, override: str,
                                                                     message: str) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(CnnlabError, match=message):
        train(make_cfg(*QUICK, "trainer.epochs=2", "checkpoints.resume=auto", override), tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_resume_modes(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="nothing to resume: no last.pt"):
        train(make_cfg(*QUICK, "checkpoints.resume=auto"), tmp_path / "empty")
    train(make_cfg(*QUICK, "trainer.epochs=1", "checkpoints.resume=allow"), tmp_path / "allow")  # starts
    train(make_cfg(*QUICK, "trainer.epochs=2", "checkpoints.resume=allow"), tmp_path / "allow")  # continues
    assert [r["epoch"] for r in epochs_of(tmp_path / "allow")] == [1, 2]
    with pytest.raises(CnnlabError, match="holds weights only"):
        train(make_cfg(*QUICK, "trainer.epochs=3", f"checkpoints.resume={tmp_path}/allow/best.pt"), tmp_path / "x")
    with pytest.raises(CnnlabError, match="does not exist"):
        train(make_cfg(*QUICK, f"checkpoints.resume={tmp_path}/nope.pt"), tmp_path / "y")


@pytest.mark.parametrize("overrides,message", [
    (["data.batch_size=100000", "augment.drop_last=true"], "the training split gives 0 batches per epoch"),
    (["model.cfg=[16,M,M,M,M,M,M]"], r"model: a 3x32x32 image does not fit through it"),
    (["dataset.val_size=600"], "dataset.val_size is 600, but the train split has only 512 images"),
])
def test_nonsense_is_refused_before_anything_is_written(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(CnnlabError, match=message):
        train(make_cfg(*QUICK, *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_signal_during_evaluation_keeps_the_epoch_and_resume_evaluates_it(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM as epoch 1's validation starts: the run stops within that evaluation, last.pt holds the trained
    epoch, and the resumed run ends as the uninterrupted one. (Seen to fail: without the save before re-raising,
    last.pt is missing and the epoch is lost.)"""
    common = [*QUICK, "trainer.epochs=2", "runtime.deterministic=true", "trainer.log_every=1"]
    train(make_cfg(*common), tmp_path / "straight")
    iterate, sent = TensorLoader.__iter__, []

    def signalling(loader: TensorLoader):
        if not loader.train and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        yield from iterate(loader)

    monkeypatch.setattr(TensorLoader, "__iter__", signalling)
    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        train(make_cfg(*common), tmp_path / "stopped")
    monkeypatch.undo()
    progress = checkpoint.load(tmp_path / "stopped" / "last.pt")["progress"]
    assert progress["epoch"] == 1 and progress["batch"] == 8 and progress["best_val_acc"] is None
    train(make_cfg(*common, "checkpoints.resume=auto"), tmp_path / "stopped")
    a, b = (checkpoint.load(tmp_path / run / "last.pt")["model"] for run in ("straight", "stopped"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(read_metrics(tmp_path / "straight" / "metrics.jsonl")) == \
        untimed(read_metrics(tmp_path / "stopped" / "metrics.jsonl"))
