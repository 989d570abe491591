"""cnnlab's airbench pieces proven against airbench's own code: ../shared/reference/airbench_reference.py, rebuilt
from airbench's files at commit f1c599c and checked bit-identical to them. Each proof was seen to fail once with
the detail it guards broken; the mutation tried is named in its docstring."""

from __future__ import annotations

from functools import partial

import conftest
import pytest
import torch
from conftest import make_cfg, outside_reference
from hydra.utils import instantiate
from torch import nn

from cnnlab.models.layers import Whitening
from cnnlab.runtime import Runtime
from cnnlab.train.muon import Muon
from cnnlab.train.sgd_decoupled import DecoupledSGD
from cnnlab.train.trainer import Trainer, logits


@pytest.fixture(scope="module")
def airbench():
    return outside_reference("airbench_reference")


def same_weights(ours: nn.Module, theirs: nn.Module) -> None:
    """Load `theirs`' state into `ours`, entry by entry in registration order (the layouts match one to one)."""
    pairs = list(zip(ours.state_dict(), theirs.state_dict().values(), strict=True))
    assert all(ours.state_dict()[k].shape == v.shape for k, v in pairs)
    ours.load_state_dict(dict(pairs))


def randomised(net: nn.Module, airbench, seed: int = 0) -> nn.Module:
    """airbench's own init, then a whitening fit and BatchNorm biases and statistics away from their defaults, so
    that every weight takes part in the comparison."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.reset_parameters()
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    airbench.init_whitening(first, torch.randn(64, 3, 32, 32))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def assert_same_function(ours: nn.Module, theirs: nn.Module) -> None:
    """Logits, loss and every gradient bit-identical in train and eval mode, and the BatchNorm buffers after a
    train-mode forward."""
    x, y = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    for train in (False, True):
        outs = [net.train(train)(x) for net in (ours, theirs)]
        assert torch.equal(outs[0], outs[1]), f"logits, train={train}"
        losses = [nn.functional.cross_entropy(out, y, label_smoothing=0.2) for out in outs]
        assert torch.equal(losses[0], losses[1])
        for net, loss in zip((ours, theirs), losses, strict=True):
            net.zero_grad(set_to_none=True)
            loss.backward()
        grads = [[p.grad for p in net.parameters() if p.requires_grad] for net in (ours, theirs)]
        assert len(grads[0]) == len(grads[1]) and all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(),
                                                 strict=True))


def test_model_airbench94_is_airbench94s_network(airbench) -> None:
    """(Seen to fail: model.pool_before_norm=false, model.output_scale=0.125.)"""
    theirs = randomised(airbench.airbench94_net(), airbench)
    ours = instantiate(make_cfg("model=airbench94").model)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters()) == 1_972_792
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    same_weights(ours, theirs)
    assert_same_function(ours, theirs)


def test_the_network_of_experiment_airbench94_muon_is_airbench94_muons(airbench) -> None:
    """(Seen to fail: model.output_scale=0.1111111111111111, airbench94's.)"""
    theirs = airbench.Airbench94MuonNet()
    theirs.reset()
    randomised(theirs, airbench)
    ours = instantiate(make_cfg("experiment=airbench94_muon").model)
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]
    same_weights(ours, theirs)
    assert_same_function(ours, theirs)


def test_the_whitening_fit_is_airbench_s_up_to_the_eigenvectors_signs(airbench) -> None:
    """The same set of filters (each eigenvector's sign is arbitrary, and cnnlab solves in float64 where airbench
    solves in float32). (Seen to fail: eps=5e-3, and the negated half dropped.)"""
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(500, 3, 32, 32, generator=g))
    images = images + 0.5 * images.roll(1, dims=3)  # neighbouring pixels correlate, as in photographs
    ours = Whitening(3, kernel=2)
    ours.fit(images)
    theirs = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    airbench.init_whitening(theirs, images)
    a, b = ours.weight.detach().flatten(1), theirs.weight.detach().flatten(1)
    for i, filter_ in enumerate(a):  # each of ours is one of theirs, or its negation
        distance = torch.minimum((b - filter_).norm(dim=1), (b + filter_).norm(dim=1)) / filter_.norm()
        assert distance.min() < 1e-3, i
    assert torch.allclose(a.norm(dim=1).sort().values, b.norm(dim=1).sort().values, rtol=1e-4)
    for filters in (a, b):  # each filter and its negation, as airbench lays them out
        assert torch.equal(filters[12:], -filters[:12])


@pytest.mark.parametrize("level,tta", [(0, "none"), (1, "flip"), (2, "flip_translate")])
def test_each_tta_level_is_airbench_s(airbench, level: int, tta: str) -> None:
    """(Seen to fail: translations by 2 pixels, padded[..., 4:, 4:].)"""
    net = randomised(airbench.airbench94_net(), airbench).eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(logits(net, x, Runtime(device="cpu", precision="fp32"), tta), airbench.tta(net, x, level))


def test_the_airbench94_schedule_is_airbench_s(airbench) -> None:
    """(Seen to fail: the warmup's length rounded instead of floored.)"""
    cfg = make_cfg("experiment=airbench94")
    parameter = nn.Parameter(torch.zeros(1))
    for total in (97, 485, 1000):
        steps_per_epoch = total
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        schedule = instantiate(cfg.sched)(optimizer, steps_per_epoch=steps_per_epoch, epochs=1)
        factors = []
        for _ in range(total):
            factors.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        assert factors == [airbench.airbench94_lr_factor(s, total) for s in range(total)], total


def train_steps(model: nn.Module, optimizers: list[torch.optim.Optimizer], steps: int, reduction: str) -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
        loss = nn.functional.cross_entropy(model.train()(x), y, label_smoothing=0.2, reduction=reduction)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()


@pytest.mark.parametrize("ns_dtype", ["fp32", "bf16"])
def test_muon_steps_the_filters_as_airbench94_muons_muon(airbench, ns_dtype: str) -> None:
    """Over 3 steps on the conv filters, Newton-Schulz in float32 and in bfloat16 (airbench's).
    (Seen to fail: Newton-Schulz coefficients (3.4445, -4.7750, 2.0314), and bf16 run in fp32.)"""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[ns_dtype]
    theirs = randomised(airbench.airbench94_net(), airbench)
    ours = instantiate(make_cfg("model=airbench94").model)
    same_weights(ours, theirs)

    def filters(net: nn.Module) -> list[nn.Parameter]:
        return [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]

    train_steps(theirs, [airbench.Muon(filters(theirs), lr=0.24, momentum=0.6, nesterov=True, dtype=dtype)], 3, "sum")
    train_steps(ours, [Muon(filters(ours), lr=0.24, momentum=0.6, nesterov=True, ns_dtype=ns_dtype)], 3, "sum")
    assert all(torch.equal(a, b) for a, b in zip(filters(ours), filters(theirs), strict=True))


def test_decoupled_sgd_with_airbench94s_values_steps_as_airbench94s_sgd(airbench) -> None:
    """optim=sgd_decoupled with airbench94's BatchNorm-bias group, over 3 steps of 32 images: airbench's SGD on the
    summed loss, cnnlab's on the mean (a power-of-two batch keeps the two exact).
    (Seen to fail: the kilostep scale without its momentum term, 1024 x 1.)"""
    theirs = randomised(airbench.airbench94_net(), airbench)
    ours = instantiate(make_cfg("model=airbench94").model)
    same_weights(ours, theirs)
    cfg = make_cfg("experiment=airbench94", "optim=sgd_decoupled", "trainer.param_groups.0.weight_decay_scale=1")
    trainer = Trainer(epochs=1, param_groups=cfg.trainer.param_groups)
    factory = partial(DecoupledSGD, lr=11.5, weight_decay=0.0153, momentum=0.85, nesterov=True, batch_size=32)
    train_steps(theirs, [airbench.airbench94_sgd(theirs, batch_size=32)], 3, "sum")
    train_steps(ours, [factory(trainer.parameter_groups(ours, factory))], 3, "mean")  # cnnlab's loss: the mean
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))


def test_a_missing_reference_fails_under_ci_and_skips_elsewhere(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "REFERENCES", tmp_path / "shared" / "reference")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"the outside reference .*shared/reference/airbench_reference\.py "
                                                    r"is missing: \.\./shared/reference must sit beside the project"):
        conftest.outside_reference("airbench_reference")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="is missing"):
        conftest.outside_reference("airbench_reference")
