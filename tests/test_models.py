from __future__ import annotations

import pytest
import torch
from conftest import CONF, make_cfg
from hydra.utils import instantiate

from cnnlab.models import VGG, ResNet

MODEL_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_CONFIGS)
@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_every_model_config_builds_and_maps_a_batch(name: str, dataset: str, classes: int) -> None:
    model = instantiate(make_cfg(f"model={name}", f"dataset={dataset}").model).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, classes)


def test_model_families_are_all_there() -> None:
    expected = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {"resnet18", "resnet34", "resnet50", "resnet50_layer4"}
    assert expected <= set(MODEL_CONFIGS)


def test_seed_vgg16_is_exact() -> None:
    model = instantiate(make_cfg("model=vgg16").model)
    assert n_params(model) == 14_983_498
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == ["Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    conv = model.features[0]
    assert torch.all(conv.bias == 0)
    expected_std = (2.0 / (3 * 3 * 64)) ** 0.5
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.15


def test_seed_resnet50_layer4_is_exact() -> None:
    model = instantiate(make_cfg("model=resnet50_layer4").model)
    assert n_params(model) == 14_750_730
    sizes = []
    h = model.stem(torch.randn(1, 3, 32, 32))
    sizes.append(h.shape[-1])
    for stage in model.stages:
        h = stage(h)
        sizes.append(h.shape[-1])
    assert sizes == [8, 4, 2, 2]
    assert h.shape[1] == 1024 and model.fc.in_features == 1024
    # every conv has a bias, every shortcut is a projection ending in BN + ReLU, no ReLU after the add
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    blocks = [b for stage in model.stages for b in stage]
    assert len(blocks) == 13
    assert all(isinstance(b.shortcut[-1], torch.nn.ReLU) for b in blocks)
    assert all(isinstance(b.out_relu, torch.nn.Identity) for b in blocks)
    # the LAST block of stages 1 and 2 downsamples
    assert [b.branch[1][0].stride[0] for b in model.stages[0]] == [1, 1, 2]
    assert [b.branch[1][0].stride[0] for b in model.stages[1]] == [1, 1, 1, 2]


def test_textbook_shortcut_variant_uses_identities() -> None:
    model = instantiate(make_cfg("model=resnet50_layer4", "model.shortcut=identity_when_possible").model)
    identities = sum(isinstance(b.shortcut, torch.nn.Identity) for s in model.stages for b in s)
    assert identities == 13 - 3 - 2  # all but the first block of each stage and the two downsampling blocks
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_standard_cifar_resnets_match_reference_sizes() -> None:
    assert n_params(instantiate(make_cfg("model=resnet18").model)) == 11_173_962
    assert n_params(instantiate(make_cfg("model=resnet34").model)) == 21_282_122
    assert n_params(instantiate(make_cfg("model=resnet50").model)) == 23_520_842


def test_zero_init_residual_zeroes_the_last_bn_of_each_branch() -> None:
    model = ResNet("basic", [1, 1], [8, 16], 10, zero_init_residual=True)
    assert all(torch.all(b.last_bn().weight == 0) for s in model.stages for b in s)


@pytest.mark.parametrize("cfg", [[64, "X", 128], [64, -3], [64, 0.5], ["M"]])
def test_bad_vgg_cfg_entry_names_the_key(cfg: list) -> None:
    with pytest.raises(ValueError, match=r"model\.cfg"):
        VGG(cfg, num_classes=10)


def test_bad_resnet_option_names_the_key_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model\.stem is 'tiny'; allowed: \['cifar', 'imagenet'\]"):
        ResNet("basic", [1], [8], 10, stem="tiny")
    with pytest.raises(ValueError, match=r"model\.block"):
        ResNet("wide", [1], [8], 10)
