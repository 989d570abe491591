"""The config tree: the seed's setup exactly, values written once, every experiment composes."""

from __future__ import annotations

import pytest
from conftest import CONF, make_cfg
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", ["seed_vgg16", "seed_resnet50_layer4"])
def test_seed_experiments_are_the_seeds_main_py(name: str) -> None:
    cfg = make_cfg(f"experiment={name}")
    assert cfg.model._target_ in ("cnnlab.models.VGG", "cnnlab.models.ResNet")
    assert cfg.model == make_cfg(f"model={name.removeprefix('seed_')}").model
    assert cfg.trainer.batch_size == 100 and cfg.trainer.epochs == 250
    assert cfg.optim._target_ == "torch.optim.Adam" and cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0
    assert cfg.sched._target_ == "cnnlab.train.schedules.constant" and cfg.sched.warmup_epochs == 0
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip and cfg.augment.padding_mode == "zeros"
    assert cfg.augment.cutout == 0 and cfg.trainer.label_smoothing == 0 and cfg.trainer.precision == "fp32"
    assert list(cfg.dataset.mean) == [0.4914, 0.4822, 0.4465]
    assert list(cfg.dataset.std) == [0.2023, 0.1994, 0.2010]  # the seed's (wrong) std, for fidelity


def test_root_config_is_the_seed_vgg16_run_with_the_correct_std_and_machine_precision() -> None:
    root, seed = make_cfg(), make_cfg("experiment=seed_vgg16")
    assert list(root.dataset.std) == [0.2470, 0.2435, 0.2616]
    for key in ("model", "optim", "sched", "augment"):
        assert root[key] == seed[key], key
    assert root.trainer.precision == "auto" and seed.trainer.precision == "fp32"  # the seed ran in fp32
    with open_dict(root):
        root.trainer.precision = "fp32"
    assert root.trainer == seed.trainer


def test_num_classes_is_written_once_and_interpolated() -> None:
    cfg = make_cfg("dataset=cifar100", "model=resnet18")
    assert cfg.model.num_classes == 100
    assert OmegaConf.to_container(cfg.model)["num_classes"] == "${dataset.num_classes}"


def test_seed_resume_continues_a_checkpoint_for_one_more_epoch() -> None:
    assert make_cfg("experiment=seed_resume").trainer.resume == "auto"
    cfg = make_cfg("experiment=seed_resume", "trainer.resume=/runs/x/last.pt")
    assert cfg.trainer.epochs == 251 and cfg.trainer.resume == "/runs/x/last.pt"
    assert cfg.optim.lr == 1e-3 and cfg.trainer.batch_size == 100


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(name: str) -> None:
    cfg = make_cfg(f"experiment={name}")
    assert instantiate(cfg.model) is not None
    assert instantiate(cfg.optim).func is not None and instantiate(cfg.sched).func is not None
