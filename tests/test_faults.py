"""The fault table: every bad input and fault cnnlab handles, run as a user runs it. Each row gives the command,
the exit code, the pattern of the one line that ends stderr, and what must stay as it was. No row may print a
traceback (HYDRA_FULL_ERROR=1 brings it back: the last row)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUICK, ROOT, SYNTH, TINY, epochs_of, make_cfg, snapshot, write_image_tree

from cnnlab.job import train
from cnnlab.track.metrics import read_metrics

pytestmark = pytest.mark.slow

LONG = [*QUICK, "trainer.epochs=50", "trainer.log_every=1"]


@dataclass
class Fault:
    name: str
    args: list[str]
    code: int
    message: str  # a regex the last line of stderr must match
    module: str = "cnnlab.run"
    prepare: Callable[[Path], None] | None = None  # builds, in the launch dir, what the row needs
    signal: int | None = None  # sent to the process group once training runs (or once `signal_when` is printed)
    signal_when: str | None = None
    file_limit: int | None = None  # RLIMIT_FSIZE in bytes: writes beyond it fail as on a full disk
    unchanged: bool = True  # the launch dir's files are byte-for-byte as before
    kept: str | None = None  # where the run may progress: a file that must stay byte-for-byte as it was


def finished_run(launch: Path) -> None:
    """A one-epoch run at run/, with Adam: what the resume rows try to continue."""
    train(make_cfg(*QUICK, "trainer.epochs=1"), launch / "run")


def hostile_checkpoint(launch: Path) -> None:
    finished_run(launch)
    ckpt = torch.load(launch / "run" / "last.pt", weights_only=True)
    ckpt["config"]["model"] = {"_target_": "builtins.open", "file": str(launch / "pwned"), "mode": "w"}
    torch.save(ckpt, launch / "hostile.pt")


def airbench_before_groups(launch: Path) -> None:
    finished_run(launch)
    ckpt = torch.load(launch / "run" / "last.pt", weights_only=True)
    ckpt["config"] = yaml.safe_load((ROOT / "tests" / "fixtures" / "layout_before_groups.yaml").read_text())[
        "airbench94_muon"]["config"]
    torch.save(ckpt, launch / "old.pt")


def text_file(launch: Path) -> None:
    (launch / "notes.pt").write_text("epoch 1 loss 2.3\n")


def crafted(edit: Callable[[dict], None], name: str = "last.pt") -> Callable[[Path], None]:
    """A finished run at run/, and its `name` edited into crafted.pt."""
    def prepare(launch: Path) -> None:
        finished_run(launch)
        ckpt = torch.load(launch / "run" / name, weights_only=True)
        edit(ckpt)
        torch.save(ckpt, launch / "crafted.pt")
    return prepare


def finished_without_last(launch: Path) -> None:
    finished_run(launch)
    (launch / "run" / "last.pt").unlink()


def cifar_claiming_checkpoint(launch: Path) -> None:
    """A best.pt whose record says: CIFAR-10, downloaded from a planted archive into victim/. This machine's own
    CIFAR-10 (a miniature, in data/) has other class names, so evaluate ends in one line, having touched nothing."""
    from test_sources import write_cifar_archive

    from cnnlab.data.sources import Cifar

    (launch / "victim").mkdir()
    with tarfile.open(launch / "evil.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(".bashrc")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"pwned"))
    write_cifar_archive(launch / "data" / "cifar10")
    Cifar(str(launch / "data" / "cifar10")).load()

    def claim(ckpt: dict) -> None:
        for node in (ckpt["config"]["dataset"], ckpt["config"]["data"]["dataset"]):
            node.update(name="cifar10", root=str(launch / "victim"), source={
                "_target_": "cnnlab.data.sources.Cifar", "root": str(launch / "victim"), "variant": "cifar10",
                "download": True, "url": f"file://{launch / 'evil.tar.gz'}", "md5": None, "png_fallback": None})
    crafted(claim, "best.pt")(launch)


def image_tree(per_class: int = 10, classes: int = 3, size: int = 32) -> Callable[[Path], None]:
    return lambda launch: write_image_tree(launch / "tree", {"train": per_class, "test": 5}, classes, size) and None


SLOW_TO_DECODE = image_tree(per_class=1500, size=96)  # ~1 s of first decode (resizing to 32), for a signal to land in


def bomb_in_tree(launch: Path) -> None:
    from test_sources import png_header_only

    image_tree()(launch)
    png_header_only(launch / "tree" / "train" / "c0" / "bomb.png", 16000, 16000)


def empty_class_in_tree(launch: Path) -> None:
    image_tree()(launch)
    (launch / "tree" / "train" / "c9").mkdir()


def damaged_run(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def prepare(launch: Path) -> None:
        finished_run(launch)
        damage(launch / "run")
    return prepare


def set_progress(**values: object) -> Callable[[dict], None]:
    return lambda ckpt: ckpt["progress"].update(values)


def first_adam_state(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda ckpt: edit(ckpt["optimizer"]["state"][0])


RESUME_CRAFTED = [*QUICK, "checkpoints.resume=crafted.pt", "trainer.epochs=2"]
IMAGE_FOLDER = [*TINY, "logger=none", "dataset=imagefolder", "dataset.root=tree", "trainer.epochs=1"]


FAULTS = [
    Fault("a config its group lacks", ["model=vgg61"], 1,
          r"^error: model=vgg61 is not a config of model; allowed: airbench94, airbench94_muon, resnet18, .*, vgg16, "
          r".*vgg_compact$"),
    Fault("a config its group lacks, in a sweep", ["-m", "model=vgg16,vgg61"], 1,
          r"^error: model=vgg61 is not a config of model; allowed: airbench94, "),
    Fault("a config its group lacks, in a list", ["optim=[sgd,a]"], 1,
          r"^error: optim=a is not a config of optim; allowed: adam, adamw, muon, sgd, sgd_decoupled$"),
    Fault("a momentum Muon cannot use", ["optim=muon", "optim.momentum=1"], 1,
          r"^error: optim\.momentum is 1; allowed: a number >= 0 and < 1$"),
    Fault("a key the config lacks", ["optim.lrr=1e-3"], 1,
          r"^error: optim\.lrr is not a key of optim; allowed keys: _target_, _partial_, lr, .* "
          r"\(a new key: \+optim\.lrr=\.\.\.\)$"),
    Fault("a top-level key the evaluate config lacks", ["chekpoint=last.pt"], 1,
          r"^error: chekpoint is not a key of the config; allowed keys: checkpoint, split, ", module="cnnlab.evaluate"),
    Fault("an override that does not parse", ["trainer.epochs=[3"], 1,
          r"^error: cannot parse the override 'trainer\.epochs=\[3': "),
    Fault("a list indexed by a name", ["model.cfg.first=8"], 1,
          r"^error: cannot apply the override 'model\.cfg\.first=8': invalid literal for int\(\)"),
    Fault("a wrong type for a Hydra setting", ["hydra.job.chdir=maybe"], 1,
          r"^error: hydra\.job\.chdir: Value 'maybe' is not a valid bool \(type str\)$"),
    Fault("a run dir that does not resolve", ["hydra.run.dir=${nosuch}"], 1,
          r"^error: cannot resolve hydra\.run\.dir: Interpolation key 'nosuch' not found$"),
    Fault("a Hydra setting resolved after the run dir exists", ["hydra.output_subdir=${nosuch}"], 1,
          r"^error: cannot resolve hydra\.output_subdir: Interpolation key 'nosuch' not found$"),
    Fault("a job subdir that does not resolve, in a sweep", ["-m", *QUICK, "hydra.sweep.subdir=${nosuch}", "seed=0,1"],
          1, r"^error: cannot resolve hydra\.sweep\.subdir: Interpolation key 'nosuch' not found$"),
    Fault("imagefolder without a root", [*TINY, "logger=none", "dataset=imagefolder"], 1,
          r"^error: dataset\.root is not set; give it, for example dataset\.root=<"),
    Fault("evaluate without a checkpoint", [], 1, r"^error: checkpoint is not set; give it", module="cnnlab.evaluate"),
    Fault("a text file as a checkpoint", ["checkpoint=notes.pt"], 1,
          r"^error: checkpoint notes\.pt is not a readable checkpoint", module="cnnlab.evaluate", prepare=text_file),
    Fault("a checkpoint naming code", ["checkpoint=hostile.pt"], 1,
          r"^error: checkpoint hostile\.pt: its recorded config is not one cnnlab writes: model\._target_ is "
          r"'builtins\.open'; allowed: cnnlab\.models\.VGG, cnnlab\.models\.ResNet, cnnlab\.models\.ConvGroups$",
          module="cnnlab.evaluate", prepare=hostile_checkpoint),
    Fault("evaluate an airbench94 checkpoint recorded as a VGG (before ConvGroups)", ["checkpoint=old.pt"], 1,
          r"^error: checkpoint old\.pt: its recorded config is not one cnnlab writes: model\.pool_before_norm is not "
          r"a key of model \(cnnlab\.models\.VGG\); allowed keys: _target_, cfg, ", module="cnnlab.evaluate",
          prepare=airbench_before_groups),
    Fault("a model that pools below 1x1", [*QUICK, "model.cfg=[16,M,M,M,M,M,M]"], 1,
          r"^error: model: a 3x32x32 image does not fit through it \("),
    Fault("a config that trains 0 batches", [*QUICK, "data.batch_size=100000", "augment.drop_last=true"], 1,
          r"^error: the training split gives 0 batches per epoch: lower data\.batch_size"),
    Fault("a zero-depth stage", [*SYNTH, "logger=none", "model=resnet18", "model.layers=[0,0,0,0]"], 1,
          r"^error: model\.layers\[0\] is 0; allowed: an integer >= 1$"),
    Fault("a negative grad clip", [*QUICK, "trainer.grad_clip=-1"], 1,
          r"^error: trainer\.grad_clip is -1; allowed: a number > 0 or null$"),
    Fault("a whitening-bias decay without a whitening stem", [*QUICK, "trainer.whiten_bias.decay=true"], 1,
          r"^error: trainer\.whiten_bias\.decay is true, but the model has no whitening bias that learns for "
          r"trainer\.whiten_bias\.epochs: set model\.whiten=true and trainer\.whiten_bias\.epochs$"),
    Fault("a whitening-bias decay sharing its group", ["experiment=airbench94_muon", *SYNTH, "data.batch_size=64",
                                                      "logger=none", "trainer.param_groups.0.params=bias"], 1,
          r"^error: trainer\.whiten_bias\.decay needs the whitening bias in a group of its own: put a "
          r"trainer\.param_groups rule \{params: whiten, \.\.\.\} before the others$"),
    Fault("a loss reduction torch lacks", [*QUICK, "trainer.loss.reduction=none"], 1,
          r"^error: trainer\.loss\.reduction is 'none'; allowed: mean \| sum$"),
    Fault("a fraction of an epoch below zero", [*QUICK, "trainer.epochs=-0.5"], 1,
          r"^error: trainer\.epochs is -0\.5; allowed: a number > 0 and <= 100000$"),
    Fault("compile=maybe", [*QUICK, "runtime.compile=maybe"], 1,
          r"^error: runtime\.compile is 'maybe'; allowed: true or false$"),
    Fault("label smoothing above 1", [*QUICK, "trainer.loss.label_smoothing=1.5"], 1,
          r"^error: trainer\.loss\.label_smoothing is 1\.5; allowed: a number >= 0 and < 1$"),
    Fault("a negative crop padding", [*QUICK, "augment.crop_padding=-2"], 1,
          r"^error: augment\.crop_padding is -2; allowed: an integer >= 0 and <= 1024$"),
    Fault("a device this machine lacks", [*QUICK, "runtime.device=cuda:7"], 1,
          r"^error: runtime\.device is 'cuda:7' but (no CUDA device is available here|this machine has)"),
    Fault("a class count the data disagrees with", [*TINY, "logger=none", "dataset=imagefolder", "dataset.root=tree",
                                                    "dataset.num_classes=7"], 1,
          r"^error: dataset\.num_classes is 7 but the data has 3 classes$",
          prepare=lambda launch: write_image_tree(launch / "tree", {"train": 10, "test": 5}) and None),
    Fault("a run dir that holds last.pt", [*QUICK, "hydra.run.dir=run"], 1,
          r"^error: run dir .*/run already holds last\.pt: continue it with checkpoints\.resume=auto",
          prepare=finished_run),
    Fault("resume with another model", [*QUICK, "hydra.run.dir=run", "checkpoints.resume=auto", "trainer.epochs=2",
                                         "model.cfg=[8,M,16,M]"], 1,
          r"^error: checkpoint .*last\.pt was trained with model\.cfg=\[16, 'M', 32, 'M', 64, 'M'\], this run has "
          r"model\.cfg=\[8, 'M', 16, 'M'\]", prepare=finished_run),
    Fault("resume Adam's checkpoint with SGD", [*QUICK, "hydra.run.dir=run", "checkpoints.resume=auto",
                                                "trainer.epochs=2", "optim=sgd"], 1,
          r"^error: checkpoint .*last\.pt was trained with optimizer cnnlab\.train\.optimizers\.adam, this run "
          r"configures cnnlab\.train\.optimizers\.sgd: resume with the checkpoint's optim choice$",
          prepare=finished_run),
    Fault("resume a hostile checkpoint", [*QUICK, "checkpoints.resume=hostile.pt", "trainer.epochs=2"], 1,
          r"^error: checkpoint hostile\.pt: its recorded config is not one cnnlab writes", prepare=hostile_checkpoint),
    Fault("a read-only outputs dir", [*QUICK], 1,
          r"^error: cannot write the run dir outputs/runs/.*: .*outputs is not writable; choose another with "
          r"hydra\.run\.dir=\.\.\.$", prepare=lambda launch: (launch / "outputs").mkdir()),
    Fault("a file-size limit (a full disk) while writing last.pt", [*QUICK, "hydra.run.dir=run",
                                                                   "checkpoints.resume=auto", "trainer.epochs=2"], 1,
          r"^error: cannot write .*run/last\.pt: the file is larger than this process may write \(ulimit -f\); "
          r"nothing was changed there$", prepare=finished_run, file_limit=200_000, unchanged=False, kept="run/last.pt"),
    Fault("an Optuna search whose every trial fails", [*QUICK, "hparams_search=optuna_lr_wd", "trainer.epochs=1",
                                                       "hydra.sweeper.n_trials=2", "optim=sgd",
                                                       "optim.lr=tag(log, interval(1e12, 1e13))"], 1,
          r"^error: all 2 trials of search optuna_lr_wd\.None\.vgg11_bn\.synthetic\.sgd\.none failed; the first, "
          r"trial 0 \(optim\.lr=.*\): training diverged at epoch 1", unchanged=False),
    Fault("a diverging job in a sweep", ["-m", *QUICK, "trainer.epochs=2", "optim=sgd", "optim.lr=0.01,1e12"], 1,
          r"^error: 1 of 2 jobs failed; the first, .*optim\.lr=1000000000000\.0: training diverged at epoch 1, "
          r"step \d+",
          unchanged=False),
    # ---- a checkpoint describes a model, never a place
    Fault("a checkpoint that names a download into any dir", ["checkpoint=crafted.pt"], 1,
          r"^error: checkpoint crafted\.pt was trained on classes \['class0', .* the data has \['n0', ",
          module="cnnlab.evaluate", prepare=cifar_claiming_checkpoint),
    Fault("a directory given as a checkpoint", ["checkpoint=run"], 1,
          r"^error: checkpoint run is a directory: give a checkpoint file, such as run/best\.pt or run/last\.pt$",
          module="cnnlab.evaluate", prepare=finished_run),
    Fault("dataset_root on a synthetic checkpoint", ["checkpoint=run/best.pt", "dataset_root=tree"], 1,
          r"^error: dataset_root is set, but checkpoint run/best\.pt was trained on synthetic data, which is "
          r"generated, not read from a dir: leave dataset_root out$", module="cnnlab.evaluate", prepare=finished_run),
    Fault("evaluate with NaN weights", ["checkpoint=crafted.pt"], 1,
          r"^error: checkpoint crafted\.pt holds NaN or inf in 1 tensors \(model\.features\.0\.weight\)",
          module="cnnlab.evaluate", prepare=crafted(lambda c: c["model"]["features.0.weight"].fill_(float("nan")),
                                                    "best.pt")),
    Fault("evaluate with int64 weights", ["checkpoint=crafted.pt"], 1,
          r"^error: checkpoint crafted\.pt does not fit the configured model: 'model\.features\.0\.weight' is "
          r"torch\.int64 \(16, 3, 3, 3\), the model's is torch\.float32", module="cnnlab.evaluate",
          prepare=crafted(lambda c: c["model"].update({"features.0.weight": c["model"]["features.0.weight"].long()}),
                          "best.pt")),
    Fault("evaluate with complex weights", ["checkpoint=crafted.pt"], 1,
          r"^error: checkpoint crafted\.pt does not fit the configured model: 'model\.features\.0\.weight' is "
          r"torch\.complex64", module="cnnlab.evaluate",
          prepare=crafted(lambda c: c["model"].update({"features.0.weight": c["model"]["features.0.weight"].cfloat()}),
                          "best.pt")),
    Fault("a W&B id that is not one", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'wandb_id' is '\.\./\.\./x y'; allowed: 1-64 letters, digits",
          prepare=crafted(lambda c: c.update(wandb_id="../../x y"))),
    # ---- every checkpoint field checked as data
    Fault("a negative epoch", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.epoch' is -3; allowed: an integer >= 1 and <= 2\*\*53$",
          prepare=crafted(set_progress(epoch=-3))),
    Fault("a batch past the epoch", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.batch' is 1000000, past the 8 batches of an epoch",
          prepare=crafted(set_progress(batch=10**6))),
    Fault("a negative batch", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.batch' is -1; allowed: an integer >= 0",
          prepare=crafted(set_progress(batch=-1))),
    Fault("a step count its epochs do not imply", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.step' is 3, but epoch 2 at batch 0 means 8 steps$",
          prepare=crafted(set_progress(step=3))),
    Fault("a negative step count", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.step' is -1000000; allowed: an integer >= 0",
          prepare=crafted(set_progress(step=-10**6))),
    Fault("a NaN best validation accuracy", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: entry 'progress\.best_val_acc' is nan; allowed: a fraction from 0 to 1",
          prepare=crafted(set_progress(best_val_acc=float("nan")))),
    Fault("optimizer state of the wrong shape", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: its optimizer state 'exp_avg' of parameter 0 is torch\.float32 \(2,\), "
          r"the parameter is torch\.float32 \(16, 3, 3, 3\)$",
          prepare=crafted(first_adam_state(lambda st: st.update(exp_avg=torch.zeros(2))))),
    Fault("NaN in the optimizer state", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: its optimizer state 'exp_avg_sq' of parameter 0 holds NaN or inf: resume "
          r"from an earlier checkpoint$",
          prepare=crafted(first_adam_state(lambda st: st["exp_avg_sq"].fill_(float("nan"))))),
    Fault("a NaN learning rate in the optimizer state", RESUME_CRAFTED, 1,
          r"^error: checkpoint crafted\.pt: its optimizer's lr is nan; allowed: finite numbers$",
          prepare=crafted(lambda c: c["optimizer"]["param_groups"][0].update(lr=float("nan")))),
    # ---- a run dir has one owner, and no path the user made is deleted
    Fault("a run dir that holds a finished run without last.pt", [*QUICK, "hydra.run.dir=run"], 1,
          r"^error: run dir .*/run already holds a finished run's best\.pt \(and no last\.pt to continue\): pick "
          r"another hydra\.run\.dir$", prepare=finished_without_last),
    Fault("resume=auto into an empty dir the user made", [*QUICK, "hydra.run.dir=mine", "checkpoints.resume=auto"], 1,
          r"^error: checkpoints\.resume=auto but there is nothing to resume: no last\.pt in .*/mine",
          prepare=lambda launch: (launch / "mine").mkdir()),
    Fault("a refused value with hydra.job.chdir=true", [*QUICK, "hydra.job.chdir=true", "trainer.grad_clip=-1"], 1,
          r"^error: trainer\.grad_clip is -1; allowed: a number > 0 or null$"),
    # ---- resume is explicit about changes
    Fault("resume with another lr", [*QUICK, "hydra.run.dir=run", "checkpoints.resume=auto", "trainer.epochs=2",
                                     "optim.lr=0.5"], 1,
          r"^error: checkpoint .*run/last\.pt was trained with other values: optim\.lr: 0\.001 -> 0\.5; resume with "
          r"the checkpoint's values, or add checkpoints\.resume_changes=allow to train on with this run's$",
          prepare=finished_run),
    Fault("resume with another batch size and data", [*QUICK, "hydra.run.dir=run", "checkpoints.resume=auto",
                                                      "trainer.epochs=2", "data.batch_size=32",
                                                      "dataset.source.noise=10"], 1,
          r"^error: checkpoint .*run/last\.pt was trained with other values: data\.batch_size: 64 -> 32, "
          r"dataset\.source\.noise: 48\.0 -> 10; resume with",
          prepare=finished_run),
    # ---- bounds instead of crashes
    Fault("more decoding workers than CPUs", [*IMAGE_FOLDER, "dataset.source.workers=48"], 1,
          r"^error: dataset\.source\.workers is 48; allowed: 1 to \d+ \(this machine's CPUs\), or null",
          prepare=image_tree()),
    Fault("more loader workers than CPUs", [*QUICK, "data.num_workers=48"], 1,
          r"^error: data\.num_workers is 48; allowed: 0 to \d+ \(this machine's CPUs\)$"),
    Fault("a synthetic task of 1e8 images", [*QUICK, "dataset.source.train_size=100000000"], 1,
          r"^error: dataset\.source\.train_size is 100000000; allowed: an integer >= 1 and <= 10000000$"),
    Fault("an image size of 30000", [*QUICK, "dataset.source.image_size=30000"], 1,
          r"^error: dataset\.source\.image_size is 30000; allowed: an integer >= 1 and <= 1024$"),
    Fault("a synthetic task too big for memory", [*QUICK, "dataset.source.train_size=10000000",
                                                  "dataset.source.image_size=1024"], 1,
          r"^error: dataset\.source\.train_size \+ test_size at image_size 1024 .* need about [\d.]+ GiB of memory"),
    Fault("a 16000x16000 PNG in an image folder", IMAGE_FOLDER, 1,
          r"^error: image .*bomb\.png has more than 89,478,485 pixels \(PIL's limit against decompression bombs\)",
          prepare=bomb_in_tree),
    # ---- no traceback for any value of any key
    Fault("an infinite warmup", [*QUICK, "sched=cosine", "sched.warmup_epochs=inf"], 1,
          r"^error: sched\.warmup_epochs is inf; allowed: a number >= 0$"),
    Fault("a seed of 2**62", [*QUICK, f"seed={2**62}"], 1,
          r"^error: seed is 4611686018427387904; allowed: an integer >= 0 and <= 4294967295$"),
    Fault("an infinite W&B timeout", [*TINY, *SYNTH, "logger.init_timeout=inf"], 1,
          r"^error: logger\.init_timeout is inf; allowed: a number > 0 and <= 3600$"),
    Fault("a W&B project with a slash", [*TINY, *SYNTH, "logger.project=a/b"], 1,
          r"^error: logger\.project is 'a/b'; allowed: a string \(1-128 characters, none of "),
    Fault("a 300-character W&B tag", [*TINY, *SYNTH, f"logger.tags=[{'t' * 300}]"], 1,
          r"^error: logger\.tags\[0\] is 't{300}'; allowed: a string \(1-64 characters on one line\)$"),
    Fault("a last batch of 1 image reaching BatchNorm1d", [*QUICK, "model.classifier_hidden=[32]",
                                                           "model.classifier_batch_norm=true", "data.batch_size=20"], 1,
          r"^error: the training split's last batch holds 1 image, which BatchNorm1d cannot normalise: set "
          r"augment\.drop_last=true"),
    Fault("a key that interpolates itself", [*QUICK, "trainer.epochs=${trainer.epochs}"], 1,
          r"^error: cannot resolve trainer\.epochs: Recursive interpolation detected$"),
    Fault("a path as a group's choice", [*QUICK, "model=../experiment/cpu_fast"], 1,
          r"^error: model=\.\./experiment/cpu_fast is not a config of model; allowed: airbench94, "),
    # ---- empty classes and non-finite values
    Fault("an empty class dir", IMAGE_FOLDER, 1,
          r"^error: dataset\.root: the class dir .*tree/train/c9 holds no images", prepare=empty_class_in_tree),
    Fault("an infinite mixup", [*QUICK, "trainer.mix.mixup=inf"], 1,
          r"^error: trainer\.mix\.mixup is inf; allowed: a number >= 0$"),
    Fault("an infinite std", [*QUICK, "dataset.std=[inf,1,1]"], 1,
          r"^error: dataset\.std(\[0\])? is .*inf.*; allowed: "),
    # ---- cnnlab.compare on damaged run dirs: one warning line each, then on
    Fault("compare on a half-written summary.json", ["run"], 1, r"^error: no finished runs with test accuracy",
          module="cnnlab.compare", prepare=damaged_run(lambda r: r.joinpath("summary.json").write_text('{"best'))),
    Fault("compare on a config that is not YAML", ["run"], 1, r"^error: no finished runs with test accuracy",
          module="cnnlab.compare",
          prepare=damaged_run(lambda r: r.joinpath("config_resolved.yaml").write_text(":\n-["))),
    Fault("compare on an epoch record without test_acc", ["run"], 1, r"^error: no finished runs with test accuracy",
          module="cnnlab.compare",
          prepare=damaged_run(lambda r: r.joinpath("metrics.jsonl").open("a").write(
              '{"kind": "epoch", "epoch": 2, "val_acc": 0.5}\n'))),
    Fault("compare on a NaN val_acc", ["run"], 1, r"^error: no finished runs with test accuracy",
          module="cnnlab.compare",
          prepare=damaged_run(lambda r: r.joinpath("metrics.jsonl").open("a").write(
              '{"kind": "epoch", "epoch": 2, "val_acc": NaN, "test_acc": 0.5}\n'))),
    Fault("compare with --out naming a file", ["run", "--out", "notes.pt"], 1,
          r"^error: --out notes\.pt cannot be a dir of results \(File exists\): give a dir$", module="cnnlab.compare",
          prepare=lambda launch: text_file(launch) or finished_run(launch)),
    # ---- Ctrl-C and SIGTERM end every phase
    Fault("Ctrl-C during the first decode of an image folder", IMAGE_FOLDER, 130, r"^interrupted by SIGINT$",
          prepare=SLOW_TO_DECODE, signal=signal.SIGINT, signal_when="decoding the"),
    Fault("SIGTERM during the first decode of an image folder", IMAGE_FOLDER, 143, r"^interrupted by SIGTERM$",
          prepare=SLOW_TO_DECODE, signal=signal.SIGTERM, signal_when="decoding the"),
    Fault("Ctrl-C", [*LONG, "hydra.run.dir=run"], 130,
          r"^interrupted by SIGINT; .*run/last\.pt holds the run: continue it with checkpoints\.resume=auto "
          r"hydra\.run\.dir=.*run$", signal=signal.SIGINT, unchanged=False),
    Fault("Ctrl-C in a sweep", ["-m", *LONG, "hydra.sweep.dir=.", "hydra.sweep.subdir=run", "seed=0,1"], 130,
          r"^interrupted by SIGINT; .*run/last\.pt holds the run: continue it with checkpoints\.resume=auto",
          signal=signal.SIGINT, unchanged=False),
    Fault("SIGTERM", [*LONG, "hydra.run.dir=run"], 143,
          r"^interrupted by SIGTERM; .*run/last\.pt holds the run", signal=signal.SIGTERM, unchanged=False),
]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` unwritable, also for root (which ignores permission bits): chattr +i where we are root."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("cannot make a dir read-only for root here (no chattr +i)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


def listing(path: Path) -> list[str]:
    """Every file and dir under `path`: a refused run leaves no new (even empty) dir behind."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def launch(fault: Fault, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault.file_limit, fault.file_limit))

    cmd = [sys.executable, "-m", fault.module, *fault.args]
    with tempfile.TemporaryDirectory() as logs:  # outside the launch dir, which must stay as it was
        out, err = Path(logs) / "out", Path(logs) / "err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True,
                                    preexec_fn=limit if fault.file_limit else None)
            if fault.signal is not None:
                deadline = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < deadline and not ready(fault, cwd, out, err):
                    time.sleep(0.01)
                os.killpg(proc.pid, fault.signal)  # as a terminal's Ctrl-C: the whole process group
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read_text(), err.read_text())


def ready(fault: Fault, cwd: Path, out: Path, err: Path) -> bool:
    if fault.signal_when is not None:
        return fault.signal_when in out.read_text() + err.read_text()
    metrics = cwd / "run" / "metrics.jsonl"
    return metrics.exists() and any(r["kind"] == "step" and r["step"] >= 3 for r in read_metrics(metrics))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_table(fault: Fault, tmp_path: Path) -> None:
    if fault.prepare:
        fault.prepare(tmp_path)
    before, paths_before = snapshot(tmp_path), listing(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with read_only(tmp_path / "outputs") if fault.name == "a read-only outputs dir" else contextlib.nullcontext():
        res = launch(fault, tmp_path, env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == fault.code, res.stderr[-3000:]
    assert lines and re.search(fault.message, lines[-1]), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    if fault.unchanged:
        assert snapshot(tmp_path) == before and listing(tmp_path) == paths_before
    if fault.kept:
        assert snapshot(tmp_path)[fault.kept] == before[fault.kept]
    assert not (tmp_path / "pwned").exists()


def test_interrupted_runs_keep_the_last_finished_step_and_say_so(tmp_path: Path) -> None:
    fault = next(f for f in FAULTS if f.name == "Ctrl-C")
    res = launch(fault, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 130
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert ckpt["progress"]["step"] == steps[-1] >= 3  # the last finished step, logged and saved
    assert '"status": "interrupted"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_real_full_disk_while_writing_last_pt(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        finished_run(mount)
        (mount / "filler").write_bytes(b"\0" * (1024 * 1024 - sum(p.stat().st_size for p in mount.rglob("*")
                                                                      if p.is_file()) - 64 * 1024))
        before = snapshot(mount / "run")
        res = subprocess.run([sys.executable, "-m", "cnnlab.run", *QUICK, f"hydra.run.dir={mount / 'run'}",
                              "checkpoints.resume=auto", "trainer.epochs=2"], cwd=tmp_path, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert re.search(r"^error: cannot write .*/small/run/(best|last)\.pt: the disk is full: free space there, or "
                         r"choose another dir; nothing was changed there$", res.stderr.strip().splitlines()[-1])
        after = snapshot(mount / "run")
        assert after["last.pt"] == before["last.pt"] and after["best.pt"] == before["best.pt"]
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.parametrize("override,message", [("trainer.grad_clip=-1", "trainer.grad_clip is -1"),
                                               ("optim.lrr=1e-3", "Key 'lrr' is not in struct")])
def test_full_error_brings_the_traceback_back(tmp_path: Path, override: str, message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "cnnlab.run", *QUICK, override], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                              "HYDRA_FULL_ERROR": "1"}, timeout=300)
    assert res.returncode == 1 and "Traceback" in res.stderr and message in res.stderr


def test_an_unwritable_cache_dir_still_trains(tmp_path: Path) -> None:
    tree = write_image_tree(tmp_path / "tree", {"train": 10, "test": 5})
    cache = tmp_path / "cache"
    cache.mkdir()
    with read_only(cache):
        res = subprocess.run([sys.executable, "-m", "cnnlab.run", *TINY, "logger=none", "dataset=imagefolder",
                              f"dataset.root={tree}", "trainer.epochs=1"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "CNNLAB_CACHE_DIR": str(cache)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "image cache not written" in res.stdout + res.stderr and not list(cache.iterdir())


def test_two_runs_started_at_once_into_one_dir_leave_one_runs_records(tmp_path: Path) -> None:
    """(Seen to fail: without RunDir.held's lock, both exit 0 and only the second seed's records remain.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "cnnlab.run", *QUICK, "trainer.epochs=3", "hydra.run.dir=run",
                               f"seed={seed}"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    winner = next(seed for seed, (code, _) in zip((1, 2), results, strict=True) if code == 0)
    refused = next(err for code, err in results if code == 1).strip().splitlines()[-1]
    assert re.search(r"^error: run dir .*/run (is in use by another live run|already holds last\.pt)", refused)
    recorded = yaml.safe_load((tmp_path / "run" / "config_resolved.yaml").read_text())
    assert recorded["seed"] == winner and len(epochs_of(tmp_path / "run")) == 3


def test_resume_changes_allow_trains_on_with_the_new_values_and_records_them(tmp_path: Path) -> None:
    finished_run(tmp_path)
    train(make_cfg(*QUICK, "trainer.epochs=2", "checkpoints.resume=auto", "checkpoints.resume_changes=allow",
                   "optim.lr=0.5", "optim.weight_decay=0.01"), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {r["lr"] for r in records if r["epoch"] == 1} == {0.001} and {r["lr"] for r in records if r["epoch"] == 2} \
        == {0.5}
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 0.5 and ckpt["optimizer"]["param_groups"][0][
        "weight_decay"] == 0.01
    recorded = yaml.safe_load((tmp_path / "run" / "config_resolved.yaml").read_text())
    assert recorded["optim"]["lr"] == 0.5 and ckpt["config"]["optim"]["lr"] == 0.5
