"""The config tree and its schema: every option of every group passes the schema, every leaf key of every
schema node refuses a wrong type and an out-of-range value in one line, and the seed's setup is exact."""

from __future__ import annotations

import copy
import functools
import re
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pydantic
import pytest
from annotated_types import Ge, Gt, Le, Len, Lt
from conftest import CONF, make_cfg
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import StringConstraints

from cnnlab import CnnlabError
from cnnlab.config import ConfigError, validate, validate_evaluate
from cnnlab.config.check import keys_of, named, one_of, strip
from cnnlab.config.root import RunConfig
from cnnlab.job import train
from cnnlab.types import STRICT, Options

GROUPS = ["model", "optim", "sched", "dataset", "augment", "trainer", "runtime", "logger", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
NEEDS = {"imagefolder": ["dataset.root=/nonexistent"], "cifar10_folder": []}  # compose-only options


@functools.cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    return make_cfg(*overrides)


def compose_option(group: str, option: str) -> DictConfig:
    extra = ["dataset.num_classes=3"] if (group, option) == ("dataset", "imagefolder") else []
    return composed((f"{group}={option}", *NEEDS.get(option, []), *extra))


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_of_every_group_passes_the_schema(group: str, option: str) -> None:
    validate(copy.deepcopy(compose_option(group, option)))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_passes_the_schema_and_builds_its_model(name: str) -> None:
    cfg = make_cfg(f"experiment={name}")
    validate(cfg)
    assert instantiate(cfg.model) is not None
    assert instantiate(cfg.optim).func is not None and instantiate(cfg.sched).func is not None


def test_a_key_with_a_declared_default_may_be_absent_from_a_recorded_config_and_no_other_may() -> None:
    cfg = make_cfg()
    with open_dict(cfg):
        del cfg.runtime.hold_freed_memory  # added after checkpoints of this format were written
    validate(cfg)
    with open_dict(cfg):
        del cfg.model.num_classes
    with pytest.raises(ConfigError, match=r"^model\.num_classes is missing; allowed: an integer >= 1 and <= 100000$"):
        validate(cfg)


def test_the_evaluate_config_passes_its_schema_once_a_checkpoint_is_given() -> None:
    validate_evaluate(make_cfg("checkpoint=x.pt", config_name="evaluate"))
    with pytest.raises(ConfigError, match=r"^checkpoint is not set; give it, for example checkpoint="):
        validate_evaluate(make_cfg(config_name="evaluate"))


# ------------------------------------------------------------------------- generated from the declarations
def leaves(node: Any, declared: Any, key: str = "") -> Iterator[tuple[Any, str, str, Any]]:
    """(declaring target, key name, full key, type) of every leaf key the config `node` has under `declared`."""
    for name, spec in keys_of(declared).items():
        full = f"{key}.{name}" if key else name
        if name not in node:  # a key at its declared default
            continue
        options, base = one_of(spec.hint), strip(spec.hint)
        if options:
            chosen = named(options.targets, node[name].get("_target_"))
            if chosen is not None and not OmegaConf.is_interpolation(node, name):  # (an interpolation: at its home)
                yield from leaves(node[name], chosen, full)
        elif isinstance(base, type) and issubclass(base, Options):
            yield from leaves(node[name], base, full)
        else:
            yield declared, name, full, spec.hint


def label(declared: Any) -> str:
    return getattr(declared, "__name__", "?")


def every_leaf() -> list[tuple[str, str, Any, list[str]]]:
    """Each (declaring target, key) once, with the key it has in the first config option that holds it."""
    seen: dict[tuple[Any, str], tuple[str, str, Any, list[str]]] = {}
    for group, option in OPTIONS:
        overrides = [f"{group}={option}", *NEEDS.get(option, [])]
        for declared, name, key, hint in leaves(compose_option(group, option), RunConfig):
            seen.setdefault((declared, name), (f"{label(declared)}.{name}", key, hint, overrides))
    return list(seen.values())


LEAVES = every_leaf()


WRONG_TYPES = ("maybe", 1.5, 7, [1], {"a": 1})  # a string, a float, an int, a list, a mapping


def wrong_type(hint: Any) -> Any:
    """A value of a type the key does not take: for a bool "maybe", for an int 1.5, for a string 7, ..."""
    return next(v for v in WRONG_TYPES if not _allows(hint, v))


def out_of_range(hint: Any) -> Any | None:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        for extra in args[1:]:
            for kind, shift in ((Ge, -1), (Gt, 0), (Le, 1), (Lt, 0)):
                if isinstance(extra, kind):
                    return getattr(extra, kind.__name__.lower()) + shift
            if isinstance(extra, Len):
                return [0.5] * (extra.min_length + 1)
            if isinstance(extra, StringConstraints):
                return next(v for v in ("%%% no match %%%", "", "a\nb") if not re.fullmatch(extra.pattern, v))
        return out_of_range(args[0])
    if origin is Literal:
        return "bogus"
    if origin in (list, Sequence):
        inner = out_of_range(args[0])
        return None if inner is None else [inner]
    if origin in (Union, types.UnionType):
        for option in args:
            value = out_of_range(option)
            if value is not None and not any(_allows(o, value) for o in args):
                return value
    return None


def _allows(hint: Any, value: Any) -> bool:
    try:
        pydantic.TypeAdapter(hint, config=STRICT).validate_python(value)
        return True
    except pydantic.ValidationError:
        return False


def refusal(overrides: list[str], key: str, value: Any) -> ConfigError | None:
    """The schema's refusal of `key` set to `value` in the config `overrides` compose, or None where it allows it."""
    cfg = copy.deepcopy(composed(tuple(overrides)))
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        validate(cfg)
    except ConfigError as e:
        return e
    return None


def assert_refused(overrides: list[str], key: str, value: Any) -> None:
    error = refusal(overrides, key, value)
    assert error is not None, f"{key}={value!r} was allowed"
    message = str(error)
    assert "\n" not in message and message.startswith((f"{key} is ", f"{key}[")) and "; allowed: " in message, message


@pytest.mark.slow
@pytest.mark.parametrize("name,key,hint,overrides", LEAVES, ids=[leaf[0] for leaf in LEAVES])
def test_every_leaf_key_refuses_a_wrong_type(name: str, key: str, hint: Any, overrides: list[str]) -> None:
    assert_refused(overrides, key, wrong_type(hint))


RANGED = [leaf for leaf in LEAVES if out_of_range(leaf[2]) is not None]


@pytest.mark.slow
@pytest.mark.parametrize("name,key,hint,overrides", RANGED, ids=[leaf[0] for leaf in RANGED])
def test_every_bounded_leaf_key_refuses_a_value_out_of_range(name: str, key: str, hint: Any,
                                                             overrides: list[str]) -> None:
    assert_refused(overrides, key, out_of_range(hint))


SPECIAL = (float("nan"), float("inf"), float("-inf"), 2**62, "", [])


def special_values_accepted() -> list[tuple[str, str, Any, list[str]]]:
    """(id, key, value, overrides) of each special value the schema lets through, for the probe below."""
    return [(f"{name}={value!r}", key, value, overrides) for name, key, _, overrides in LEAVES for value in SPECIAL
            if refusal(overrides, key, value) is None]


@pytest.mark.parametrize("name,key,hint,overrides", LEAVES, ids=[leaf[0] for leaf in LEAVES])
def test_every_leaf_key_refuses_special_values_in_one_line_or_takes_them(name: str, key: str, hint: Any,
                                                                        overrides: list[str]) -> None:
    """nan, inf, -inf, 2**62, "" and []: refused in one line that names the key, or allowed by its type (and then
    probed by a real run below). No float key takes nan or inf."""
    for value in SPECIAL:
        error = refusal(overrides, key, value)
        if error is None:
            assert not (isinstance(value, float) and value != 2**62), f"{key} took {value}"
        else:
            assert "\n" not in str(error) and str(error).startswith((f"{key} is ", f"{key}[")), str(error)


ACCEPTED = special_values_accepted()
# Keys that count steps, epochs or seconds: a huge value only makes the run longer (or never ending), so a run is
# not probed with one.
COUNTERS = ("trainer.", "runtime.ddp_timeout_s", "optim.batch_size", "optim.accumulate", "sched.warmup_epochs")


@pytest.mark.slow
@pytest.mark.parametrize("name,key,value,overrides", [a for a in ACCEPTED if not a[1].startswith(COUNTERS)],
                         ids=[a[0] for a in ACCEPTED if not a[1].startswith(COUNTERS)])
def test_a_special_value_the_schema_takes_trains_or_fails_in_one_line(name: str, key: str, value: Any,
                                                                      overrides: list[str], tmp_path: Path) -> None:
    data = [] if key.startswith("dataset.") else ["dataset=synthetic"]
    if key.startswith("dataset.") and composed(tuple(overrides)).dataset.name != "synthetic":
        pytest.skip("a real dataset's source: its empty strings are tried by tests/test_sources.py")
    cfg = make_cfg(*overrides, *data, "dataset.source.train_size=256", "dataset.source.test_size=64", "logger=none",
                   "trainer.epochs=1", "trainer.limits.train_batches=2", "trainer.limits.eval_batches=1",
                   "data.batch_size=32")
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        train(cfg, tmp_path / "run")
    except CnnlabError as e:
        assert "\n" not in str(e)


def declared_targets(declared: Any) -> set[str]:
    """Every target a run's config may name, below `declared`."""
    found = set()
    for spec in keys_of(declared).values():
        options = one_of(spec.hint)
        for target in options.targets if options else ():
            if target is not None:
                found |= {label(target)} | declared_targets(target)
    return found


def test_the_generated_tests_reach_every_declared_target_and_most_keys() -> None:
    nodes = {name.split(".")[0] for name, *_ in LEAVES}
    assert declared_targets(RunConfig) <= nodes  # (a list's items, the param_groups rules: tested below)
    assert len(LEAVES) > 90 and len(RANGED) > 60


@pytest.mark.parametrize("override,message", [
    ("trainer.grad_clip=-1", "trainer.grad_clip is -1; allowed: a number > 0 or null"),
    ("runtime.compile=maybe", "runtime.compile is 'maybe'; allowed: true or false"),
    ("runtime.channels_last=maybe", "runtime.channels_last is 'maybe'; allowed: auto | true | false"),
    ("trainer.loss.label_smoothing=1.5", "trainer.loss.label_smoothing is 1.5; allowed: a number >= 0 and < 1"),
    ("augment.crop_padding=-2", "augment.crop_padding is -2; allowed: an integer >= 0"),
    ("model=resnet18 model.layers=[0,0,0,0]", "model.layers[0] is 0; allowed: an integer >= 1"),
    ("+trainer.foo=1", "trainer.foo is not a key of trainer (cnnlab.train.trainer.Trainer); allowed keys: "),
    ("+foo=1", "foo is not a key of the config; allowed keys: seed, objective, "),
    ("trainer.param_groups=[{params:bogus,lr_scale:1,weight_decay_scale:1}]",
     "trainer.param_groups[0].params is 'bogus'; allowed: bias | norm | norm_bias | norm_weight | whiten | linear"),
    ("trainer.param_groups=[{params:bias,lr_scale:0,weight_decay_scale:1}]",
     "trainer.param_groups[0].lr_scale is 0; allowed: a number > 0"),
    ("trainer.param_groups=[{params:bias,lr_scale:1,weight_decay_scale:-1}]",
     "trainer.param_groups[0].weight_decay_scale is -1; allowed: a number >= 0"),
    ("trainer.param_groups=[{params:bias,lr_scale:1}]",
     "trainer.param_groups[0].weight_decay_scale is missing; allowed: a number >= 0"),
])
def test_the_reported_bad_values_are_refused_in_one_line(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*override.split()))
    assert str(err.value).startswith(message)


def test_a_validation_objective_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match="objective is best_val_acc but dataset.val_size is 0"):
        validate(make_cfg("dataset.val_size=0"))
    validate(make_cfg("dataset.val_size=0", "objective=final_test_acc"))


def test_a_missing_mandatory_value_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^dataset.root is not set; give it, for example dataset.root=<"):
        validate(make_cfg("dataset=imagefolder"))


# ------------------------------------------------------------------------------------------ the seed, exact
@pytest.mark.parametrize("name", ["seed_vgg16", "seed_resnet50_layer4"])
def test_seed_experiments_are_the_seeds_main_py(name: str) -> None:
    cfg = make_cfg(f"experiment={name}")
    assert cfg.model == make_cfg(f"model={name.removeprefix('seed_')}").model
    assert cfg.data.batch_size == 100 and cfg.trainer.epochs == 250
    assert cfg.optim._target_ == "cnnlab.train.optimizers.adam" and cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 0
    assert cfg.sched._target_ == "cnnlab.train.schedules.constant" and cfg.sched.warmup_epochs == 0
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip and cfg.augment.padding_mode == "zeros"
    assert cfg.augment.cutout == 0 and cfg.trainer.loss.label_smoothing == 0 and cfg.runtime.precision == "fp32"
    assert list(cfg.dataset.mean) == [0.4914, 0.4822, 0.4465]
    assert list(cfg.dataset.std) == [0.2023, 0.1994, 0.2010]  # the seed's (wrong) std, for fidelity
    assert cfg.dataset.val_size == 0 and cfg.objective == "final_test_acc"  # the seed had no validation split


def test_root_config_is_the_seed_vgg16_run_plus_a_validation_split_and_the_correct_std() -> None:
    root, seed = make_cfg(), make_cfg("experiment=seed_vgg16")
    assert list(root.dataset.std) == [0.2470, 0.2435, 0.2616]
    assert root.dataset.val_size == 5000 and root.objective == "best_val_acc"
    for key in ("model", "optim", "sched", "augment", "trainer"):
        assert root[key] == seed[key], key
    assert root.runtime.precision == "auto" and seed.runtime.precision == "fp32"  # the seed ran in fp32


def test_values_are_written_once_and_interpolated() -> None:
    cfg = make_cfg("dataset=cifar100", "model=resnet18")
    assert cfg.model.num_classes == 100
    raw = OmegaConf.to_container(cfg)
    assert raw["model"]["num_classes"] == "${dataset.num_classes}"
    assert raw["data"]["dataset"] == "${dataset}" and raw["data"]["augment"] == "${augment}"


def test_shared_recipes_are_inherited_not_restated() -> None:
    vgg, resnet = make_cfg("experiment=vgg16_bn_sgd"), make_cfg("experiment=resnet18_sgd")
    base = make_cfg("experiment=kuangliu_sgd")
    for key in ("optim", "sched", "trainer", "data"):
        assert vgg[key] == resnet[key] == base[key], key
    assert base.optim.lr == 0.4 and base.data.batch_size == 512 and base.trainer.epochs == 200


def test_seed_resume_continues_a_checkpoint_for_one_more_epoch() -> None:
    assert make_cfg("experiment=seed_resume").checkpoints.resume == "auto"
    cfg = make_cfg("experiment=seed_resume", "checkpoints.resume=/runs/x/last.pt")
    assert cfg.trainer.epochs == 251 and cfg.checkpoints.resume == "/runs/x/last.pt"
    assert cfg.optim.lr == 1e-3 and cfg.data.batch_size == 100
