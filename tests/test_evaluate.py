"""`cnnlab.evaluate`: the trainer's figures again, class by class, from a checkpoint's schema-checked record."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUICK, epochs_of, make_cfg, run_cli

from cnnlab import CnnlabError
from cnnlab.data.sources import Cifar
from cnnlab.evaluate import evaluate
from cnnlab.job import train


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
    text = (tmp_path / "eval.json").read_text()
    saved = json.loads(text)
    assert saved["acc"] == round(result["acc"], 6) and "synthetic" in saved["data"]
    assert saved["confusion"] == confusion and "\n    [" in text  # one row a line
    assert all(len(repr(v).split(".")[-1]) <= 6 for v in saved["per_class_acc"].values())
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


def test_a_checkpoint_names_no_place_the_data_comes_from_this_machines_config(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A best.pt whose record claims CIFAR-10 downloaded from a planted archive into any dir: evaluate reads this
    machine's CIFAR-10 (its data_dir) and never fetches, extracts or writes where the record says.
    (Seen to fail: with evaluate rebuilding the data from the recorded `data` node, the planted .bashrc lands.)"""
    from test_sources import write_cifar_archive

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / ".bashrc").write_text("echo pwned\n")
    with tarfile.open(evil / "evil.tar.gz", "w:gz") as tar:
        tar.add(evil / ".bashrc", arcname=".bashrc")
    victim = tmp_path / "victim"
    victim.mkdir()
    data_dir = tmp_path / "data"
    write_cifar_archive(data_dir / "cifar10")
    Cifar(str(data_dir / "cifar10")).load()  # extracted, as a real download would be
    run_dir = tmp_path / "run"
    train(make_cfg(*QUICK, "trainer.epochs=1"), run_dir)
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["classes"] = [f"n{i}" for i in range(10)]
    for node in (ckpt["config"]["dataset"], ckpt["config"]["data"]["dataset"]):
        node.update(name="cifar10", root=str(victim), source={
            "_target_": "cnnlab.data.sources.Cifar", "root": str(victim), "variant": "cifar10", "download": True,
            "url": f"file://{evil / 'evil.tar.gz'}", "md5": None, "png_fallback": None})
    torch.save(ckpt, tmp_path / "crafted.pt")
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(data_dir))
    result = evaluate(eval_cfg(f"checkpoint={tmp_path / 'crafted.pt'}"), tmp_path / "out")
    assert result["images"] == 20 and "CIFAR-10 from" in result["data"] and str(data_dir) in result["data"]
    assert list(victim.iterdir()) == []


def test_an_image_folder_checkpoint_needs_this_machines_root_and_a_synthetic_one_refuses_it(trained: Path,
                                                                                           tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match=r"^dataset_root is set, but checkpoint .* was trained on synthetic data"):
        evaluate(eval_cfg(f"checkpoint={trained / 'best.pt'}", f"dataset_root={tmp_path}"), tmp_path / "out")
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt["config"]["dataset"].update(name="imagefolder", root="/elsewhere", source={
        "_target_": "cnnlab.data.sources.ImageFolder", "root": "/elsewhere", "image_size": 32, "workers": None})
    torch.save(ckpt, tmp_path / "folder.pt")
    with pytest.raises(CnnlabError, match=r"trained on an image folder \(recorded as /elsewhere\); a checkpoint "
                                          r"names no paths: give this machine's copy with dataset_root=<dir>$"):
        evaluate(eval_cfg(f"checkpoint={tmp_path / 'folder.pt'}"), tmp_path / "out")


@pytest.mark.parametrize("edit,message", [
    (lambda w: w.fill_(float("nan")), r"holds NaN or inf in 1 tensors \(model\.features\.0\.weight\)"),
    (lambda w: w.to(torch.int64), r"'model\.features\.0\.weight' is torch\.int64 \(16, 3, 3, 3\), the model's is "
                                  r"torch\.float32"),
    (lambda w: w.to(torch.complex64), r"'model\.features\.0\.weight' is torch\.complex64"),
    (lambda w: w[:8], r"'model\.features\.0\.weight' is torch\.float32 \(8, 3, 3, 3\)"),
])
def test_weights_that_are_not_the_models_are_refused_in_one_line(trained: Path, tmp_path: Path, edit: Any,
                                                                 message: str) -> None:
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt["model"]["features.0.weight"] = edit(ckpt["model"]["features.0.weight"])
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CnnlabError, match=message) as err:
        evaluate(eval_cfg(f"checkpoint={tmp_path / 'bad.pt'}"), tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
