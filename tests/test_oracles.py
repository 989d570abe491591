"""cnnlab's airbench pieces proven against airbench's own code: ../shared/reference/airbench_reference.py, rebuilt
from airbench's files at commit f1c599c and checked bit-identical to them. Each proof was seen to fail once with
the detail it guards broken; the mutation tried is named in its docstring."""

from __future__ import annotations

import math
from functools import partial

import conftest
import pytest
import torch
from conftest import make_cfg, outside_reference
from hydra.utils import instantiate
from torch import nn

from cnnlab.job import build_model, train
from cnnlab.models.layers import Whitening
from cnnlab.runtime import Runtime
from cnnlab.train import checkpoint
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
    for training in (False, True):
        outs = [net.train(training)(x) for net in (ours, theirs)]
        assert torch.equal(outs[0], outs[1]), f"logits, train={training}"
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
    """(Seen to fail: ConvGroups pooling after its first BN and activation, model.output_scale=0.125.)"""
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


def test_the_whitening_fit_is_airbench_s(airbench) -> None:
    """The same filters to the bit, signs and order included (airbench solves in float32, and so does cnnlab).
    (Seen to fail: eps=5e-3; the negated half dropped; the eigenproblem solved in float64.)"""
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(500, 3, 32, 32, generator=g))
    images = images + 0.5 * images.roll(1, dims=3)  # neighbouring pixels correlate, as in photographs
    ours = Whitening(3, kernel=2)
    ours.fit(images)
    theirs = nn.Conv2d(3, 24, 2, padding=0, bias=True)
    airbench.init_whitening(theirs, images)
    assert torch.equal(ours.weight, theirs.weight)


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
        schedule = instantiate(cfg.sched)(optimizer, steps_per_epoch, 1)
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


# ------------------------------------------------------------------------------ the recipes, step for step
ORACLE_RUN = [*conftest.SYNTH, "dataset.source.train_size=110", "logger=none", "data.batch_size=32",
              "runtime.device=cpu", "runtime.precision=fp32", "runtime.channels_last=false", "trainer.log_every=1"]


def cnnlab_run(tmp_path, overrides: list[str]) -> tuple[dict, dict, dict, list[list[tuple]], torch.Tensor]:
    """A real run of `overrides`, and what airbench's loop needs to repeat it: cnnlab's initial weights (its
    whitening not yet fitted), the batches each epoch drew, and the images the whitening is fitted to. Returns
    those with last.pt's model and weight average."""
    cfg = make_cfg(*overrides)
    train(cfg, tmp_path / "run")
    last = checkpoint.load(tmp_path / "run" / "last.pt")
    data = instantiate(cfg.data)("cpu", 0, 1, False)
    initial = build_model(cfg, data, 0).state_dict()
    epochs = []
    for epoch in range(1, math.ceil(cfg.trainer.epochs) + 1):
        data.train.set_epoch(epoch)
        epochs.append(list(data.train))
    return initial, last["model"], last["average"], epochs, data.train.first_images(5000)


def test_experiment_airbench94_trains_step_for_step_as_airbench94s_loop(airbench, tmp_path) -> None:
    """legacy/airbench94.py's main() on the same batches (110 images in batches of 32, the partial one dropped,
    4.4 epochs: 14 steps, so the whitening bias freezes and Lookahead updates twice, then ends on its average).
    (Seen to fail: ema.start_epoch 1, the average starting at step 5; the steps of 4.4 epochs rounded, not up;
    the last partial batch kept; the Lookahead decay computed in float64.)"""
    initial, model, average, epochs, first = cnnlab_run(
        tmp_path, ["experiment=airbench94", "model.widths=[16,32,32]", "trainer.epochs=4.4", *ORACLE_RUN])
    net = airbench.airbench94_net(widths=(16, 32, 32))
    net.load_state_dict(dict(zip(net.state_dict(), initial.values(), strict=True)))
    total = math.ceil(len(epochs[0]) * 4.4)
    sgd = airbench.airbench94_sgd(net, batch_size=32)
    schedule = torch.optim.lr_scheduler.LambdaLR(sgd, lambda i: airbench.airbench94_lr_factor(i, total))
    decays = 0.95**5 * (torch.arange(total + 1) / total) ** 3
    lookahead = {k: v.clone() for k, v in net.state_dict().items()}  # taken before the whitening fit, as airbench

    def lookahead_update(decay: float) -> None:
        for kept, current in zip(lookahead.values(), net.state_dict().values(), strict=True):
            if current.dtype == torch.float:
                kept.lerp_(current, 1 - decay)
                current.copy_(kept)

    airbench.init_whitening(net[0], first)
    loss_fn, step = nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none"), 0
    for epoch in range(math.ceil(4.4)):
        net[0].bias.requires_grad = epoch < 3
        net.train()
        for x, y in epochs[epoch]:
            loss = loss_fn(net(x), y).sum()
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
            schedule.step()
            step += 1
            if step % 5 == 0:
                lookahead_update(decays[step].item())
            if step >= total:
                before_the_last_copy = {k: v.clone() for k, v in net.state_dict().items()}
                lookahead_update(1.0)
                break
    assert step == total == 14
    assert all(torch.equal(a, b) for a, b in zip(model.values(), before_the_last_copy.values(), strict=True))
    ended_on = [v for v in net.state_dict().values() if v.is_floating_point()]
    assert all(torch.equal(a, b) for a, b in zip(average.values(), ended_on, strict=True))


def test_experiment_airbench94_muon_trains_step_for_step_as_airbench94_muons_loop(airbench, tmp_path) -> None:
    """airbench94_muon.py's main() on the same batches (3 batches of 32 an epoch, 4 epochs), with its optimizers
    as airbench94_muon_optimizers builds them for batch 2000's decay, Newton-Schulz in bf16.
    (Seen to fail: the whitening bias on the shared schedule; the mean loss; the head's lr_scale 2.79, lr 0.6696.)"""
    initial, model, _, epochs, first = cnnlab_run(tmp_path, [
        "experiment=airbench94_muon", "model.widths=[16,32,32]", "model.output_scale=0.03125",
        "trainer.epochs=4", *ORACLE_RUN])
    net = airbench.Airbench94MuonNet(widths=(16, 32, 32))
    net.load_state_dict(dict(zip(net.state_dict(), initial.values(), strict=True)))
    sgd, muon = airbench.airbench94_muon_optimizers(net, batch_size=2000)
    for optimizer in (sgd, muon):
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    total, whiten_bias_steps = 4 * len(epochs[0]), 3 * len(epochs[0])
    airbench.init_whitening(net.whiten, first)
    step = 0
    for epoch in range(4):
        net.train()
        for x, y in epochs[epoch]:
            outputs = net(x, whiten_bias_grad=step < whiten_bias_steps)
            nn.functional.cross_entropy(outputs, y, label_smoothing=0.2, reduction="sum").backward()
            for group in sgd.param_groups[:1]:
                group["lr"] = group["initial_lr"] * (1 - step / whiten_bias_steps)
            for group in sgd.param_groups[1:] + muon.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / total)
            sgd.step()
            muon.step()
            net.zero_grad(set_to_none=True)
            step += 1
    assert step == total == 12
    assert all(torch.equal(a, b) for a, b in zip(model.values(), net.state_dict().values(), strict=True))


def test_experiment_airbench94_muons_optimizer_pair_is_airbench94_muons(airbench) -> None:
    """The same parameters in the same groups with the same lrs, decays and momenta as
    airbench94_muon_optimizers, SGD and Muon taken together. (Seen to fail: weight_decay_scale 18.86792452830189;
    the head's lr_scale one ulp up, 2.7916666666666674, which steps float32 weights as 0.67 does.)"""
    cfg = make_cfg("experiment=airbench94_muon")
    ours = instantiate(cfg.model)
    theirs = airbench.Airbench94MuonNet()
    names = dict(zip((id(p) for p in theirs.parameters()), (n for n, _ in ours.named_parameters()), strict=True))
    sgd, muon = airbench.airbench94_muon_optimizers(theirs)
    factory = instantiate(cfg.optim)
    groups = Trainer(epochs=1, param_groups=cfg.trainer.param_groups).parameter_groups(ours, factory)
    optimizer = factory(groups)
    ours_by_name = {n: p for n, p in ours.named_parameters()}

    def described(group: dict, momentum: float) -> tuple:
        return (sorted(names[id(p)] for p in group["params"]), group["lr"], group.get("weight_decay", 0.0), momentum)

    expected = [described(g, 0.85) for g in sgd.param_groups] + [described(g, 0.6) for g in muon.param_groups]
    actual = []
    for group in optimizer.param_groups:
        params = [n for n, p in ours_by_name.items() if any(p is q for q in group["params"])]
        filters = all(ours_by_name[n].ndim == 4 for n in params)
        actual.append((sorted(params), group["lr"], 0.0 if filters else group["weight_decay"],
                       group["momentum"] if filters else group["sgd_momentum"]))
    assert actual == expected
