from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SYNTH, TINY, make_cfg, run_cli

from cnnlab import CnnlabError
from cnnlab.evaluate import evaluate
from cnnlab.run import train
from cnnlab.track.metrics import read_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    train(make_cfg(*TINY, *SYNTH, "trainer.epochs=3", "optim.lr=3e-3", "logger=none"), run_dir)
    return run_dir


def test_evaluate_reproduces_the_trainers_figures_per_class(trained: Path, tmp_path: Path) -> None:
    result = evaluate(trained / "best.pt", tmp_path)
    best = max(r["test_acc"] for r in read_metrics(trained / "metrics.jsonl") if r["kind"] == "epoch")
    assert result["test_acc"] == pytest.approx(best, abs=1e-6)
    assert result["images"] == 256 and len(result["per_class_acc"]) == 10
    confusion = result["confusion"]
    assert sum(map(sum, confusion)) == 256
    assert sum(confusion[i][i] for i in range(10)) / 256 == pytest.approx(result["test_acc"])
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["test_acc"] == result["test_acc"]
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flip_tta_changes_the_predictions_not_the_bookkeeping(trained: Path, tmp_path: Path) -> None:
    plain = evaluate(trained / "last.pt", tmp_path / "plain")
    tta = evaluate(trained / "last.pt", tmp_path / "tta", tta_flip=True)
    assert tta["images"] == plain["images"] and tta["tta_flip"]
    assert tta["test_loss"] != plain["test_loss"]


def test_evaluate_command_line(trained: Path, tmp_path: Path) -> None:
    res = run_cli(f"checkpoint={trained / 'last.pt'}", cwd=tmp_path, module="cnnlab.evaluate")
    assert res.returncode == 0, res.stderr[-2000:]
    (out,) = (tmp_path / "outputs" / "eval").iterdir()
    assert (out / "eval.json").exists() and (out / "confusion.png").exists()
    assert "test accuracy" in res.stdout + res.stderr
    bad = run_cli(f"checkpoint={tmp_path / 'missing.pt'}", cwd=tmp_path, module="cnnlab.evaluate")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: checkpoint ")


def test_checkpoint_without_config_cannot_be_evaluated(tmp_path: Path) -> None:
    import torch

    torch.save({"model": {}}, tmp_path / "bare.pt")
    with pytest.raises(CnnlabError, match="carries no config"):
        evaluate(tmp_path / "bare.pt", tmp_path / "out")
