"""`cnnlab.evaluate`: the trainer's figures again, class by class, from a checkpoint's schema-checked record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK, epochs_of, make_cfg, run_cli

from cnnlab import CnnlabError
from cnnlab.evaluate import evaluate
from cnnlab.run import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3"), run_dir)
    return run_dir


def eval_cfg(*overrides: str):
    return make_cfg(*overrides, config_name="evaluate")


def test_evaluate_reproduces_the_trainers_figures_per_class(trained: Path, tmp_path: Path) -> None:
    result = evaluate(eval_cfg(f"checkpoint={trained / 'last.pt'}"), tmp_path)
    final = epochs_of(trained)[-1]
    assert result["acc"] == pytest.approx(final["test_acc"], abs=1e-9)
    assert result["loss"] == pytest.approx(final["test_loss"], rel=1e-4)
    assert result["images"] == 256 and len(result["per_class_acc"]) == 10
    confusion = result["confusion"]
    assert sum(map(sum, confusion)) == 256
    assert sum(confusion[i][i] for i in range(10)) / 256 == pytest.approx(result["acc"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["acc"] == result["acc"] and "synthetic" in saved["data"]
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_validation_split_and_flip_tta(trained: Path, tmp_path: Path) -> None:
    val = evaluate(eval_cfg(f"checkpoint={trained / 'last.pt'}", "split=val"), tmp_path / "val")
    assert val["acc"] == pytest.approx(epochs_of(trained)[-1]["val_acc"], abs=1e-9) and val["images"] == 51
    plain = evaluate(eval_cfg(f"checkpoint={trained / 'last.pt'}"), tmp_path / "plain")
    tta = evaluate(eval_cfg(f"checkpoint={trained / 'last.pt'}", "tta=flip"), tmp_path / "tta")
    assert tta["images"] == plain["images"] and tta["tta"] == "flip" and tta["loss"] != plain["loss"]


def test_a_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match=r"^checkpoint .*missing.pt does not exist$"):
        evaluate(eval_cfg(f"checkpoint={tmp_path / 'missing.pt'}"), tmp_path / "out")


@pytest.mark.slow
def test_evaluate_command_line(trained: Path, tmp_path: Path) -> None:
    res = run_cli(f"checkpoint={trained / 'best.pt'}", cwd=tmp_path, module="cnnlab.evaluate")
    assert res.returncode == 0, res.stderr[-2000:]
    (out,) = (tmp_path / "outputs" / "eval").iterdir()
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "eval.json"]
    assert "test accuracy" in res.stdout + res.stderr
