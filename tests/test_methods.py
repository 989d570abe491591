"""The methods of fast training, each a switch: the whitening stem, BatchNorm options, parameter groups, the
weight average and Lookahead, the Muon optimizer, airbench's decoupled SGD, alternating flip, test-time augmentation
levels, mixup/cutmix, gradient accumulation, the debug group, and the airbench94 network and recipes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import QUICK, SYNTH, TINY, epochs_of, make_cfg, untimed
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from cnnlab.data.loader import Augment, TensorLoader
from cnnlab.job import train
from cnnlab.models.layers import Whitening
from cnnlab.runtime import Runtime
from cnnlab.train import checkpoint
from cnnlab.train.ema import EmaSchedule, WeightAverage
from cnnlab.train.mix import mix_batch
from cnnlab.train.muon import Muon, orthogonalise
from cnnlab.train.schedules import onecycle
from cnnlab.train.trainer import Trainer, logits

NO_BN = ["model=vgg11", "model.cfg=[16,M,32,M,64,M]", "model.classifier_hidden=[]", "model.classifier_dropout=0.0",
         "model.classifier_batch_norm=false", *SYNTH, "logger=none", "runtime.precision=fp32",
         "runtime.deterministic=true"]


def test_the_whitening_layer_whitens_patches_and_stays_frozen() -> None:
    g = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[1.0, 0.8, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    images = torch.einsum("ij,njhw->nihw", mixing, torch.randn(200, 3, 16, 16, generator=g))  # correlated channels
    layer = Whitening(3, kernel=2, eps=0.0)
    layer.fit(images)
    with torch.no_grad():
        out = nn.functional.conv2d(images, layer.weight)[:, :12]  # the positive half of the filters
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    assert torch.allclose(flat @ flat.T / flat.shape[1], torch.eye(12), atol=1e-3)
    assert not layer.weight.requires_grad and layer.bias.requires_grad and layer.out_channels == 24


def test_airbench94_is_airbench_s_network() -> None:
    model = instantiate(make_cfg("model=airbench94").model)
    assert sum(p.numel() for p in model.parameters()) == 1_972_792  # airbench94.py's make_net()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6 and all(not bn.weight.requires_grad and bn.eps == 1e-12 and bn.momentum == 0.4 for bn in bns)
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 7
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None and torch.equal(c.weight[:, :, 1, 1].diagonal()[: c.in_channels],
                                              torch.ones(min(c.in_channels, c.out_channels))) for c in convs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_parameter_groups_scale_lr_and_decay_and_leave_frozen_weights_out() -> None:
    model = instantiate(make_cfg("model=airbench94").model)
    trainer = Trainer(epochs=1, param_groups=[{"params": "norm_bias", "lr_scale": 64.0, "weight_decay_scale": 0.5}])
    groups = trainer.parameter_groups(model, partial(torch.optim.SGD, lr=0.1, weight_decay=0.01))
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in groups[0]["params"]} == norm_biases
    assert groups[0]["lr"] == pytest.approx(6.4) and groups[0]["weight_decay"] == pytest.approx(0.005)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable  # no frozen BN scale, no whitening filter


def test_newton_schulz_keeps_the_singular_vectors_and_pulls_the_singular_values_together() -> None:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(576, 64, generator=g))
    spread = torch.logspace(0, -3, 64)  # singular values 1 ... 1e-3
    for m, (left, right) in {"wide": (u, v), "tall": (v, u)}.items():
        out = orthogonalise(left @ torch.diag(spread) @ right.T)
        in_basis = left.T @ out @ right
        assert torch.allclose(in_basis, torch.diag(in_basis.diagonal()), atol=1e-5), m
        s = in_basis.diagonal()
        assert 0.9 < s.max() < 1.5 and s.min() > 0 and s.max() / s.min() < 100, m  # from a spread of 1000


def test_muon_steps_conv_filters_along_their_orthogonalised_momentum_and_the_rest_by_sgd() -> None:
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, bias=True)
    head = nn.Linear(16, 4)
    twin = [p.detach().clone().requires_grad_() for p in (conv.bias, head.weight, head.bias)]
    opt = Muon([{"params": [conv.weight]}, {"params": [conv.bias, head.weight, head.bias], "lr": 0.5}], lr=0.1,
               momentum=0.6, weight_decay=0.01, sgd_momentum=0.85)
    sgd = torch.optim.SGD(twin, lr=0.5, momentum=0.85, nesterov=True, weight_decay=0.01)
    filt, buf = conv.weight.detach().clone(), torch.zeros_like(conv.weight)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in (conv.weight, conv.bias, head.weight, head.bias)]
        conv.weight.grad = grads[0]
        for p, q, grad in zip((conv.bias, head.weight, head.bias), twin, grads[1:], strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        sgd.step()
        buf = 0.6 * buf + grads[0]
        update = orthogonalise((grads[0] + 0.6 * buf).reshape(16, -1)).view_as(filt)
        filt = filt * 16**0.5 / filt.norm() - 0.1 * update
        assert torch.allclose(conv.weight, filt, atol=1e-6)
        assert all(torch.allclose(p, q) for p, q in zip((conv.bias, head.weight, head.bias), twin, strict=True))


def test_onecycle_without_a_ramp_decays_linearly_from_the_first_step() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = onecycle(opt, 5, 2, pct_start=0.0, start_ratio=1.0, end_ratio=0.0)
    factors = []
    for _ in range(10):
        factors.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert factors == pytest.approx([1 - s / 10 for s in range(10)])  # airbench94_muon's schedule


def test_the_muon_recipe_groups_biases_head_and_filters() -> None:
    cfg = make_cfg("experiment=airbench94_muon")
    model = instantiate(cfg.model)
    groups = Trainer(epochs=1, param_groups=cfg.trainer.param_groups).parameter_groups(model, instantiate(cfg.optim))
    whiten, biases, head, filters = ({id(p) for p in group["params"]} for group in groups)
    assert whiten == {id(m.bias) for m in model.modules() if isinstance(m, Whitening)}
    assert biases == {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert head == {id(model.classifier[0].weight)}
    assert filters == {id(m.weight) for m in model.features if isinstance(m, nn.Conv2d)}
    # airbench94_muon's own values (batch 2000, summed loss): each step at full lr takes 2e-6 x 2000 off
    for group, lr in zip(groups, (0.053, 0.053, 0.67), strict=False):
        assert group["lr"] == lr and group["lr"] * group["weight_decay"] == pytest.approx(2e-6 * 2000, rel=1e-12)
    assert cfg.trainer.loss.reduction == "sum" and cfg.trainer.whiten_bias.decay
    assert cfg.trainer.ema.every == 0 and (cfg.trainer.epochs, cfg.data.batch_size) == (8, 2000)


def flat(tree: dict, prefix: str) -> dict:
    """A config node's leaves (a list is one) under their dotted keys, the data node's dataset and augment whole."""
    leaves = {}
    for key, sub in tree.items():
        nested = isinstance(sub, dict) and prefix != "data"
        leaves |= flat(sub, f"{prefix}.{key}") if nested else {f"{prefix}.{key}": sub}
    return leaves


def test_cpu_fast_is_airbench94_muon_but_for_the_differences_its_header_lists() -> None:
    muon, cpu = make_cfg("experiment=airbench94_muon"), make_cfg("experiment=cpu_fast")
    assert cpu.model == make_cfg("model=airbench94").model  # airbench94's head: default init, logits x 1/9
    biases, head = cpu.trainer.param_groups
    # the mean loss: the SGD groups' lr x 2000 (the batch), the head's also x (9/256)^2 for its logits x 1/9
    assert biases.lr_scale * cpu.optim.lr == pytest.approx(0.053 * 2000, rel=1e-4)
    assert head.lr_scale * cpu.optim.lr == pytest.approx(0.67 * 2000 * (9 / 256) ** 2, rel=1e-4)  # the same steps
    for group in (biases, head):  # what each step takes off, as airbench's 2e-6 x 2000
        decay = group.lr_scale * group.weight_decay_scale * cpu.optim.lr * cpu.optim.weight_decay
        assert decay == pytest.approx(4e-3, rel=1e-3)
    assert cpu.optim.ns_dtype == "fp32" and muon.optim.ns_dtype == "bf16"
    assert (cpu.dataset.val_size, cpu.augment.drop_last, cpu.objective) == (5000, False, "best_val_acc")
    assert (muon.dataset.val_size, muon.augment.drop_last, muon.objective) == (0, True, "final_test_acc")
    assert (cpu.trainer.loss.reduction, cpu.trainer.whiten_bias.decay) == ("mean", False)
    listed = {"optim.weight_decay", "optim.ns_dtype", "trainer.param_groups", "trainer.loss.reduction",
              "trainer.whiten_bias.decay", "dataset.val_size", "augment.drop_last"}
    for key in ("optim", "trainer", "sched", "data", "dataset", "augment"):
        mine, theirs = flat(OmegaConf.to_container(cpu[key]), key), flat(OmegaConf.to_container(muon[key]), key)
        differing = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        assert differing <= listed | {"data.dataset", "data.augment"}, key  # (data.* repeat dataset and augment)


@pytest.mark.parametrize("batch_size,accumulate", [(1024, 1), (256, 4), (500, 1)])
def test_decoupled_sgd_turns_airbench_s_own_values_into_airbench94_s_pytorch_sgd(batch_size: int,
                                                                                 accumulate: int) -> None:
    """experiment=airbench94 (optim=sgd_decoupled with airbench94's 11.5 and 0.0153) builds what airbench94.py
    builds for its summed loss, in cnnlab's mean-loss terms: lr and decay per 1024 images over the kilostep scale."""
    cfg = make_cfg("experiment=airbench94", f"data.batch_size={batch_size}", f"trainer.accumulate={accumulate}")
    trainer = Trainer(epochs=1, param_groups=cfg.trainer.param_groups)
    sgd = instantiate(cfg.optim)(trainer.parameter_groups(instantiate(cfg.model), instantiate(cfg.optim)))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    images, kilostep = batch_size * accumulate, 1024 * (1 + 1 / (1 - 0.85))
    for group, bias_scaler in zip(sgd.param_groups, (64.0, 1.0), strict=True):  # the BatchNorm biases, the rest
        assert group["lr"] == pytest.approx(11.5 * bias_scaler * images / kilostep, rel=1e-12)
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * images / kilostep, rel=1e-12)
        assert group["momentum"] == 0.85


def test_the_weight_average_and_its_schedule() -> None:
    model = nn.Linear(2, 1, bias=False)
    nn.init.ones_(model.weight)
    average = WeightAverage(model.state_dict())
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model, decay=0.75)
    assert torch.allclose(average.state["weight"], torch.full((1, 2), 1.5))  # 0.75 * 1 + 0.25 * 3
    average.copy_to(model)
    assert torch.equal(model.weight, average.state["weight"])
    schedule = EmaSchedule(every=5, decay=0.95, ramp_power=3.0, start_epoch=4)
    assert not schedule.due(3, 10) and schedule.due(4, 10) and not schedule.due(4, 11)
    assert schedule.decay_at(50, 100) == pytest.approx(0.95**5 * 0.125)


def test_alternating_flip_flips_each_image_in_exactly_one_of_two_epochs() -> None:
    n = 500
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, :, :, 0] = 255  # a bright left column: where it ends up tells whether the image was flipped
    loader = TensorLoader(images, torch.arange(n), n, [0, 0, 0], [1 / 255] * 3, train=True,
                          augment=Augment(crop_padding=0, flip="alternate"), seed=3)

    def flipped(epoch: int) -> torch.Tensor:
        loader.set_epoch(epoch)
        (x, y), = list(loader)
        return (x[:, 0, 0, -1] > 0.5)[y.argsort()]  # by image id

    first, second, third = flipped(1), flipped(2), flipped(3)
    assert torch.all(first ^ second) and torch.equal(first, third)
    assert 0.4 < first.float().mean() < 0.6


def test_tta_levels() -> None:
    torch.manual_seed(0)
    model = instantiate(make_cfg(*TINY).model).eval()
    runtime = Runtime(device="cpu", precision="fp32")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain, mirror = model(x), (model(x) + model(x.flip(3))) / 2
        assert torch.equal(logits(model, x, runtime, "none"), plain)
        assert torch.allclose(logits(model, x, runtime, "flip"), mirror)
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = [(model(v) + model(v.flip(3))) / 2 for v in (padded[..., :32, :32], padded[..., 2:, 2:])]
        expected = 0.5 * mirror + 0.25 * shifted[0] + 0.25 * shifted[1]
        assert torch.allclose(logits(model, x, runtime, "flip_translate"), expected, atol=1e-6)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_mix_a_batch_with_a_permutation_of_itself(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 8, 8), torch.arange(16)
    mixed, y_a, y_b, lam = mix_batch(x, y, mixup, cutmix)
    assert torch.equal(y_a, y) and sorted(y_b.tolist()) == list(range(16)) and 0 <= lam <= 1
    partner = x[y_b]
    if cutmix:  # every pixel comes from the image or its partner, in the share lam
        from_self = (mixed == x).all(1)
        assert torch.all(from_self | (mixed == partner).all(1))
        moved = y_b != y  # (an image paired with itself is all its own)
        assert from_self[moved].float().mean().item() == pytest.approx(lam, abs=1e-6)
    else:
        assert torch.allclose(mixed, lam * x + (1 - lam) * partner)


def test_accumulating_two_half_batches_is_one_whole_batch(tmp_path: Path) -> None:
    common = [*NO_BN, "trainer.epochs=1", "optim=sgd", "optim.lr=0.05", "augment.crop_padding=0",
              "augment.flip=false", "augment.drop_last=true"]
    train(make_cfg(*common, "data.batch_size=64"), tmp_path / "whole")
    train(make_cfg(*common, "data.batch_size=32", "trainer.accumulate=2"), tmp_path / "halves")
    a = checkpoint.load(tmp_path / "whole" / "last.pt")
    b = checkpoint.load(tmp_path / "halves" / "last.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 7  # 461 images: 7 whole batches of 64
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k


@pytest.mark.slow
def test_the_airbench_recipe_trains_and_resumes_exactly(tmp_path: Path) -> None:
    # a constant lr and decay: the shorter first half then trains exactly like the start of the whole run
    common = ["experiment=airbench94", *SYNTH, "logger=none", "data.batch_size=128", "trainer.epochs=4",
              "trainer.eval_every=1", "trainer.tta=none", "runtime.deterministic=true", "trainer.ema.start_epoch=2",
              "trainer.ema.ramp_power=0", "trainer.whiten_bias.epochs=1", "trainer.log_every=2", "sched.start_ratio=1",
              "sched.end_ratio=1"]
    objective = train(make_cfg(*common), tmp_path / "straight")
    assert objective > 0.3  # it learns (chance: 0.1)
    train(make_cfg(*common, "trainer.epochs=2"), tmp_path / "split")  # stops with a weight average running
    assert checkpoint.load(tmp_path / "split" / "last.pt")["average"] is not None
    train(make_cfg(*common, "checkpoints.resume=auto"), tmp_path / "split")
    a = checkpoint.load(tmp_path / "straight" / "last.pt")
    b = checkpoint.load(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["average"][k], b["average"][k]) for k in a["average"])
    straight, split = untimed(epochs_of(tmp_path / "straight")), untimed(epochs_of(tmp_path / "split"))
    # the split's first command ended at epoch 2, and so on Lookahead's average, which it evaluated there
    assert [r for r in straight if r["epoch"] != 2] == [r for r in split if r["epoch"] != 2]
    assert a["model"]["stem.0.bias"].abs().sum() > 0  # the whitening bias learnt during its epoch


@pytest.mark.slow
def test_the_muon_recipe_trains_and_resumes_exactly(tmp_path: Path) -> None:
    common = ["experiment=airbench94_muon", *SYNTH, "logger=none", "data.batch_size=128", "trainer.epochs=3",
              "trainer.tta=none", "runtime.deterministic=true", "trainer.whiten_bias.epochs=1",
              "sched.end_ratio=1"]  # a constant lr: the shorter first part then trains like the whole run's start
    assert train(make_cfg(*common), tmp_path / "straight") > 0.3  # it learns (chance: 0.1)
    train(make_cfg(*common, "trainer.epochs=1"), tmp_path / "split")
    train(make_cfg(*common, "checkpoints.resume=auto"), tmp_path / "split")
    a = checkpoint.load(tmp_path / "straight" / "last.pt")
    b = checkpoint.load(tmp_path / "split" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    filters = [v for k, v in a["model"].items() if k.startswith("features") and v.ndim == 4]
    assert all(torch.allclose(f.norm(), torch.tensor(len(f) ** 0.5), rtol=0.2) for f in filters)


@pytest.mark.slow
def test_the_whitening_bias_freezes_after_its_epochs(tmp_path: Path) -> None:
    common = ["experiment=airbench94", *SYNTH, "logger=none", "data.batch_size=128", "trainer.ema.every=0",
              "trainer.tta=none", "sched.start_ratio=1", "sched.end_ratio=1"]  # a constant lr: the same epoch 1
    train(make_cfg(*common, "trainer.epochs=2", "trainer.whiten_bias.epochs=1"), tmp_path / "a")
    train(make_cfg(*common, "trainer.epochs=1", "trainer.whiten_bias.epochs=1"), tmp_path / "b")
    after_two = checkpoint.load(tmp_path / "a" / "last.pt")["model"]["stem.0.bias"]
    after_one = checkpoint.load(tmp_path / "b" / "last.pt")["model"]["stem.0.bias"]
    assert torch.equal(after_one, after_two) and after_one.abs().sum() > 0


def test_a_weight_average_is_evaluated_without_lookahead(tmp_path: Path) -> None:
    train(make_cfg(*QUICK, "trainer.epochs=2", "trainer.ema.every=1", "trainer.ema.decay=0.9"), tmp_path)
    ckpt = checkpoint.load(tmp_path / "last.pt")
    best = checkpoint.load(tmp_path / "best.pt")
    assert ckpt["average"] is not None
    float_keys = [k for k, v in ckpt["model"].items() if v.is_floating_point()]
    assert not all(torch.equal(ckpt["model"][k], ckpt["average"][k]) for k in float_keys)
    assert all(torch.equal(best["model"][k], ckpt["average"][k]) for k in float_keys)  # best.pt: the average


def test_mixup_trains(tmp_path: Path) -> None:
    assert train(make_cfg(*QUICK, "trainer.epochs=3", "optim.lr=3e-3", "trainer.mix.mixup=0.2",
                          "trainer.mix.cutmix=1.0"), tmp_path) > 0.3


@pytest.mark.parametrize("debug,steps", [("fast_dev_run", 2), ("limit_batches", 20), ("overfit", 120)])
def test_the_debug_group(tmp_path: Path, debug: str, steps: int) -> None:
    extra = ["trainer.epochs=1"] if debug == "limit_batches" else []
    train(make_cfg(*TINY, *SYNTH, f"debug={debug}", "data.batch_size=16", "logger=none", *extra), tmp_path)
    epochs = epochs_of(tmp_path)
    assert epochs[-1]["step"] == steps
    if debug == "overfit":  # four batches, seen 30 times, unaugmented: learnt by heart
        assert epochs[-1]["train_acc"] == 1.0
    if debug == "fast_dev_run":
        assert not (tmp_path / "last.pt").exists()


def test_gpu_fast_is_the_airbench_recipe_and_runs_here_for_a_few_batches(tmp_path: Path) -> None:
    cfg = make_cfg("experiment=gpu_fast")
    assert cfg.runtime.device == "cuda" and cfg.runtime.compile and cfg.model == make_cfg("model=airbench94").model
    train(make_cfg("experiment=gpu_fast", "runtime.device=cpu", "runtime.compile=false", "debug=fast_dev_run",
                   *SYNTH, "data.batch_size=64"), tmp_path)
    assert epochs_of(tmp_path)[-1]["step"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("name,epochs,batch_size,tta",
                         [("cpu_fast_v2", 9, 1024, "flip_translate"), ("cpu_fast_quick", 3, 512, "flip")])
def test_the_cpu_recipes_are_the_airbench_recipe_cut_short_and_run(tmp_path: Path, name: str, epochs: int,
                                                                    batch_size: int, tta: str) -> None:
    cfg, airbench = make_cfg(f"experiment={name}"), make_cfg("experiment=airbench94")
    assert cfg.model == airbench.model
    assert {**cfg.augment, "drop_last": None} == {**airbench.augment, "drop_last": None}  # they keep the last batch
    assert (cfg.optim.momentum, cfg.optim.nesterov) == (airbench.optim.momentum, airbench.optim.nesterov)
    assert (cfg.trainer.epochs, cfg.data.batch_size, cfg.trainer.tta) == (epochs, batch_size, tta)
    train(make_cfg(f"experiment={name}", *SYNTH, "dataset.val_size=64", "logger=none", "data.batch_size=128"),
          tmp_path)
    epochs_run = epochs_of(tmp_path)
    assert len(epochs_run) == epochs and "test_acc" in epochs_run[-1]
