"""Checkpoints are data: hostile ones run nothing and get one line; writes are atomic, concurrency-safe and
take the umask; and a run killed anywhere resumes bit-identical."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import QUICK, ROOT, SYNTH, TINY, make_cfg, untimed
from omegaconf import OmegaConf

from cnnlab import CnnlabError
from cnnlab.atomic import FILE_MODE, atomic_save, atomic_write_text, remove_orphans
from cnnlab.evaluate import evaluate
from cnnlab.job import train
from cnnlab.track.metrics import read_metrics
from cnnlab.train import checkpoint
from cnnlab.train.recorded import recorded_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    train(make_cfg(*QUICK, "trainer.epochs=1"), run_dir)
    return run_dir


class Payload:
    """Pickles to a call of os.system: the classic code-in-a-checkpoint attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def crafted(trained: Path, tmp_path: Path, edit: Any, name: str = "last.pt") -> Path:
    """A copy of a real checkpoint with `edit(ckpt)` applied, saved as a plain torch file."""
    ckpt = torch.load(trained / name, weights_only=True)
    edit(ckpt)
    path = tmp_path / f"crafted_{name}"
    torch.save(ckpt, path)
    return path


def hostile_configs(tmp_path: Path, marker: Path) -> dict[str, Any]:
    payload = tmp_path / "payload.pt"
    torch.save({"x": Payload(marker)}, payload)
    return {
        "torch.load of a payload": ("model", {"_target_": "torch.load", "f": str(payload), "weights_only": False}),
        "builtins.open": ("model", {"_target_": "builtins.open", "file": str(marker), "mode": "w"}),
        "a nested target in a model key": ("model.style.init", {"_target_": "os.system", "command": f"touch {marker}"}),
        "an extra instantiate key": ("model._args_", [str(marker)]),
        "a hostile data source": ("dataset.source", {"_target_": "os.system", "command": f"touch {marker}"}),
        "a hostile data node": ("data._target_", "os.system"),
        "an interpolation": ("model.style.init", "${cnnlab.dir:" + str(marker) + "}"),
        "an env interpolation": ("data_dir", "${oc.env:HOME}"),
    }


def set_key(tree: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        tree = tree[part]
    tree[last] = value


@pytest.mark.parametrize("case", ["torch.load of a payload", "builtins.open", "a nested target in a model key",
                                  "an extra instantiate key", "a hostile data source", "a hostile data node",
                                  "an interpolation", "an env interpolation"])
@pytest.mark.parametrize("use", ["evaluate", pytest.param("resume", marks=pytest.mark.slow)])
def test_a_checkpoint_naming_code_runs_nothing_and_gets_one_line(trained: Path, tmp_path: Path, case: str,
                                                                 use: str) -> None:
    marker = tmp_path / "pwned"
    key, value = hostile_configs(tmp_path, marker)[case]
    path = crafted(trained, tmp_path, lambda c: set_key(c["config"], key, value))
    with pytest.raises(CnnlabError) as err:
        if use == "evaluate":
            evaluate(make_cfg(f"checkpoint={path}", config_name="evaluate"), tmp_path / "eval")
        else:
            train(make_cfg(*QUICK, "trainer.epochs=2", f"checkpoints.resume={path}"), tmp_path / "run")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists() and not (tmp_path / "run").exists()


# Configs that cnnlab recorded in checkpoints before keys moved into groups (written by commit c0e8d6d)
BEFORE_GROUPS = yaml.safe_load((Path(__file__).parent / "fixtures" / "layout_before_groups.yaml").read_text())
TODAYS_OVERRIDES = {"quick": [*QUICK, "trainer.epochs=1"],
                    "resnet": [*SYNTH, "logger=none", "model=resnet50_layer4", "trainer.mix.mixup=0.2",
                               "checkpoints.save=false", "trainer.limits.eval_batches=2"]}
MACHINE_PATHS = ("data_dir", "cache_dir")


@pytest.mark.parametrize("name", list(TODAYS_OVERRIDES))
def test_a_config_recorded_before_the_keys_moved_into_groups_reads_as_todays(name: str) -> None:
    """(Seen to fail: trainer.mixup moved to trainer.mix.cutmix in the upgrade, and without the checkpoints node.)"""
    recorded = OmegaConf.to_container(recorded_config({"config": BEFORE_GROUPS[name]["config"], "path": "old.pt"}))
    today = OmegaConf.to_container(make_cfg(*TODAYS_OVERRIDES[name]), resolve=True)
    for config in (recorded, today):
        for key in MACHINE_PATHS:
            config.pop(key), config["data"].pop(key, None)
    assert recorded == today


def test_an_airbench94_network_recorded_as_a_vgg_is_refused_in_one_line_naming_todays_keys() -> None:
    with pytest.raises(CnnlabError, match=r"^checkpoint old\.pt: its recorded config is not one cnnlab writes: "
                                          r"model\.pool_before_norm is not a key of model \(cnnlab\.models\.VGG\); "
                                          r"allowed keys: _target_, cfg, num_classes, .*style.*$"):
        recorded_config({"config": BEFORE_GROUPS["airbench94_muon"]["config"], "path": "old.pt"})


def test_a_checkpoint_from_before_the_grouped_keys_evaluates_and_resumes(trained: Path, tmp_path: Path) -> None:
    old = crafted(trained, tmp_path, lambda c: c.update(config=BEFORE_GROUPS["quick"]["config"]))
    result = evaluate(make_cfg(f"checkpoint={old}", config_name="evaluate"), tmp_path / "eval")
    assert result["images"] == 256 and 0 <= result["acc"] <= 1
    train(make_cfg(*QUICK, "trainer.epochs=2", f"checkpoints.resume={old}"), tmp_path / "resumed")
    assert [r["epoch"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl") if r["kind"] == "epoch"] == [2]


def test_a_pickle_with_a_code_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "model": {}, "payload": Payload(marker)}, path)
    with pytest.raises(CnnlabError, match="refused by the weights-only loader"):
        checkpoint.load(path)
    assert not marker.exists()


ENTRIES = ["format", "kind", "model", "progress", "config", "classes", "wandb_id", "optimizer", "scheduler",
           "scaler", "running", "rng"]


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("wrong", ["a string", 7, None, ["a", "list"]])
def test_a_wrong_type_in_any_entry_is_one_line(trained: Path, tmp_path: Path, entry: str, wrong: Any) -> None:
    path = crafted(trained, tmp_path, lambda c: c.__setitem__(entry, wrong))
    loaded = None
    try:
        loaded = checkpoint.load(path)
    except CnnlabError as e:
        assert "\n" not in str(e) and (entry in str(e) or "format" in str(e))
    if loaded is not None:  # a value of the right type (a string for wandb_id, a list for running): resume
        try:  # works or is refused in one line, never with another exception
            train(make_cfg(*QUICK, "trainer.epochs=2", f"checkpoints.resume={path}"), tmp_path / "run")
        except CnnlabError as e:
            assert "\n" not in str(e)


@pytest.mark.parametrize("field", list(checkpoint.PROGRESS))
def test_a_wrong_type_in_progress_is_one_line(trained: Path, tmp_path: Path, field: str) -> None:
    path = crafted(trained, tmp_path, lambda c: c["progress"].__setitem__(field, "x"))
    with pytest.raises(CnnlabError, match=f"entry 'progress.{field}' is str"):
        checkpoint.load(path)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["model"].__setitem__("features.0.weight", "not a tensor"), "'model' must map parameter names"),
    (lambda c: c["rng"][0].__setitem__("torch", "x"), "RNG states, running sums or weight average are malformed"),
    (lambda c: c["optimizer"].__setitem__("param_groups", [{"x": 1}]), "'optimizer' state does not fit"),
    (lambda c: c["model"]["features.0.weight"].fill_(float("nan")), "holds NaN or inf in 1 tensors"),
    (lambda c: c["progress"].__setitem__("epoch", 99), "nothing to train"),
])
def test_malformed_contents_are_refused_on_resume_in_one_line(trained: Path, tmp_path: Path, edit: Any,
                                                               message: str) -> None:
    path = crafted(trained, tmp_path, edit)
    with pytest.raises(CnnlabError, match=message) as err:
        train(make_cfg(*QUICK, "trainer.epochs=2", f"checkpoints.resume={path}"), tmp_path / "run")
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,message", [
    (lambda ok: ok[: len(ok) // 2], "not a readable checkpoint"),
    (lambda ok: b"epoch 1 loss 2.3\n" * 40, "not a readable checkpoint"),
    (lambda ok: b"", "not a readable checkpoint"),
    (lambda ok: None, "not a cnnlab checkpoint of format 2"),  # a plain torch file: a tensor
    (lambda ok: pickle.dumps({"format": 2}), "not a readable checkpoint"),  # a plain pickle
])
def test_truncated_and_foreign_files_are_one_line(trained: Path, tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "file.pt"
    data = content((trained / "last.pt").read_bytes())
    if data is None:
        torch.save(torch.ones(3), path)
    else:
        path.write_bytes(data)
    with pytest.raises(CnnlabError, match=message) as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)


def test_a_best_checkpoint_of_the_old_format_is_refused(trained: Path, tmp_path: Path) -> None:
    path = crafted(trained, tmp_path, lambda c: c.pop("format"), "best.pt")
    with pytest.raises(CnnlabError, match="not a cnnlab checkpoint of format 2"):
        evaluate(make_cfg(f"checkpoint={path}", config_name="evaluate"), tmp_path / "eval")


# ------------------------------------------------------------------------------------------ atomic writes
def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(3)}, path)
    with pytest.raises((pickle.PicklingError, AttributeError)):  # "can't pickle local object"
        atomic_save({"w": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_written_files_take_the_umask_not_0600(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "summary.json", "{}")
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == FILE_MODE == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_only_orphaned_or_old_temp_files_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "cache.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    from cnnlab.atomic import HOST

    live = tmp_path / f".cache.pt.{HOST}.{os.getppid()}.abc123.tmp"  # a live writer: our parent process
    orphan = tmp_path / f".cache.pt.{HOST}.{dead}.def456.tmp"
    other_host = tmp_path / ".cache.pt.elsewhere.1.ghi789.tmp"
    old = tmp_path / ".cache.pt.elsewhere.2.jkl012.tmp"
    for p in (live, orphan, other_host, old):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    remove_orphans(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other_host.name])


def test_write_errors_name_the_path_and_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(CnnlabError, match=r"cannot write .*not_a_dir/last.pt: .*; nothing was changed there"):
        atomic_write_text(blocker / "last.pt", "x")


# ------------------------------------------------------------------------------- SIGKILL, then resume
# A model whose checkpoints (about 50 MB with Adam's state) take longer to write than a training step, so that
# kills at arbitrary moments also land inside checkpoint writes.
KILL_RUN = [*TINY, "model.classifier_hidden=[2048,2048]", "dataset=synthetic", "dataset.source.train_size=352",
            "dataset.source.test_size=64", "dataset.val_size=32", "data.batch_size=32", "trainer.epochs=3",
            "trainer.log_every=1", "checkpoints.every_steps=1", "runtime.deterministic=true", "logger=none"]


def _start(run_dir: Path, resume: bool, loader: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "cnnlab.run", *KILL_RUN, f"data.loader={loader}", f"hydra.run.dir={run_dir}"]
    if resume:
        args.append("checkpoints.resume=auto")
    return subprocess.Popen(args, cwd=run_dir.parent, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return max((r["step"] for r in read_metrics(path)), default=0) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("loader,targets", [("tensor", [3, 10, 14, 20, 24, 27]), ("torchvision", [4, 15, 25])])
def test_sigkill_anywhere_then_resume_ends_bit_identical(tmp_path: Path, loader: str, targets: list[int]) -> None:
    reference = tmp_path / "reference"
    proc = _start(reference, resume=False, loader=loader)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

    killed = tmp_path / "killed"
    kills, mid_write, mid_epoch = 0, 0, 0
    for i, target in enumerate(targets):  # 10 steps per epoch: mid-epoch, at epoch ends, in the last epoch
        proc = _start(killed, resume=i > 0, loader=loader)
        deadline = time.monotonic() + 120
        while _steps_logged(killed) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if i % 2:  # every other kill lands inside a checkpoint write: while its temp file exists
            while not any(killed.glob(".last.pt.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
        else:
            time.sleep(0.002 * i)  # vary the moment within the step
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        mid_write += any(killed.glob(".last.pt.*.tmp"))
        ckpt = checkpoint.load(killed / "last.pt")  # whatever the moment, last.pt is whole
        mid_epoch += ckpt["progress"]["batch"] != 0
    proc = _start(killed, resume=True, loader=loader)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]

    assert kills == len(targets) and mid_epoch >= 1
    assert mid_write >= 1, "no kill landed inside a checkpoint write"
    a, b = checkpoint.load(reference / "last.pt"), checkpoint.load(killed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["progress"]["step"] == b["progress"]["step"] == 30
    assert untimed(read_metrics(reference / "metrics.jsonl")) == untimed(read_metrics(killed / "metrics.jsonl"))

