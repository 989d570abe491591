"""Checks a composed config against what the code declares, and says each fault in one line: the key, the
value, what is allowed.

A node with a `_target_` may hold the keys its target takes: the parameters of its signature after any
positional-only ones (those the code supplies, so such a node is `_partial_: true`), typed and bounded in the
signature (cnnlab.types). A key annotated `OneOf(...)` holds a node of one of those targets; an interpolation of
another node (data.dataset: ${dataset}) is checked at its home. pydantic checks the values; nothing here builds
anything, and no `_target_` is imported: it must be one the code declares.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin

import pydantic
from annotated_types import Ge, Gt, Le, Len, Lt
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from cnnlab import CnnlabError
from cnnlab.types import STRICT, OneOf, Words


class ConfigError(CnnlabError):
    """A config value that the code does not allow."""


class Key(typing.NamedTuple):
    hint: Any
    required: bool
    default: Any = None


@functools.cache
def keys_of(declared: Any) -> dict[str, Key]:
    """The keys a node of `declared` holds: a target's parameters after the positional-only ones, or the fields
    of a class with annotations (a root node, an Options group)."""
    if typing.is_typeddict(declared):
        hints = typing.get_type_hints(declared, include_extras=True)
        return {name: Key(hint, name in declared.__required_keys__) for name, hint in hints.items()}
    if isinstance(declared, type) and issubclass(declared, pydantic.BaseModel):
        hints = typing.get_type_hints(declared, include_extras=True)
        return {name: Key(hints[name], field.is_required(), field.default)
                for name, field in declared.model_fields.items()}
    hints = typing.get_type_hints(declared.__init__ if inspect.isclass(declared) else declared, include_extras=True)
    params = list(inspect.signature(declared).parameters.values())
    return {p.name: Key(hints[p.name], p.default is inspect.Parameter.empty, p.default) for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@functools.cache
def is_partial(target: Any) -> bool:
    """Whether the code supplies some of `target`'s arguments (its positional-only ones)."""
    return any(p.kind is p.POSITIONAL_ONLY for p in inspect.signature(target).parameters.values())


def names(target: Any) -> list[str]:
    """The `_target_` strings that name `target`: its module path and each package above it that exports it,
    shortest first (cnnlab.models.VGG, cnnlab.models.vgg.VGG)."""
    parts = target.__module__.split(".")
    packages = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [f"{p}.{target.__qualname__}" for p in packages
            if getattr(sys.modules.get(p), target.__qualname__, None) is target]


def node_name(target: Any) -> str:
    return "none (an empty node)" if target is None else names(target)[0]


def named(targets: tuple[Any, ...], name: Any) -> Any | None:
    """The one of `targets` that the `_target_` string `name` names, or None."""
    return next((t for t in targets if t is not None and name in names(t)), None)


def one_of(hint: Any) -> OneOf | None:
    return next((a for a in get_args(hint)[1:] if isinstance(a, OneOf)), None) if get_origin(hint) is Annotated \
        else None


# ------------------------------------------------------------------------------------------------- checks
def check(node: Any, declared: Any, key: str = "") -> None:
    """Check the keys of `node` (a DictConfig) against `declared`: none unknown, none missing, every value
    allowed, then each node it holds against its target."""
    keys = keys_of(declared)
    reserved = (["_target_", "_partial_"] if is_partial(declared) else ["_target_"]) if "_target_" in node else []
    unknown = [k for k in node if k not in keys and k not in reserved]
    if unknown:
        where = f"{key} ({node['_target_']})" if reserved else key
        raise ConfigError(not_a_key(join(key, unknown[0]), where, [*reserved, *keys]))
    values, nodes = {}, []
    for name, spec in keys.items():
        if name not in node.keys():  # noqa: SIM118 - a DictConfig counts a ??? value as not `in` it
            if spec.required:
                raise ConfigError(f"{join(key, name)} is missing; allowed: {describe(spec.hint)}")
            continue
        if OmegaConf.is_missing(node, name):
            raise ConfigError(f"{join(key, name)} is not set; give it, for example {join(key, name)}="
                              f"<{describe(spec.hint)}>")
        options = one_of(spec.hint)
        if options:
            if not OmegaConf.is_interpolation(node, name):
                nodes.append((name, options))
            continue
        values[name] = plain(resolved(node, name, join(key, name)))
    try:
        model_of(declared).model_validate(values)
    except pydantic.ValidationError as e:
        fail_with(e.errors()[0], values, keys, key)
    for name, options in nodes:
        check_target(node[name], options.targets, join(key, name))


def check_target(node: Any, targets: tuple[Any, ...], key: str) -> None:
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{key} is {show(node)}; allowed: a node of {', '.join(map(node_name, targets))}")
    target = node.get("_target_")
    if target is None and None in targets and not node:
        return
    chosen = named(targets, target)
    if chosen is None:
        raise ConfigError(f"{join(key, '_target_')} is {show(target)}; allowed: "
                          f"{', '.join(map(node_name, targets))}")
    partial, wanted = node.get("_partial_", False), is_partial(chosen)
    if partial is not wanted:
        raise ConfigError(f"{join(key, '_partial_')} is {show(partial)}; allowed: {show(wanted)}")
    check(node, chosen, key)


@functools.cache
def model_of(declared: Any) -> type[pydantic.BaseModel]:
    """A pydantic model of the values `declared` takes (the nodes it holds are checked on their own)."""
    fields = {name: (spec.hint, ... if spec.required else spec.default) for name, spec in keys_of(declared).items()
              if not one_of(spec.hint)}
    return pydantic.create_model(f"{getattr(declared, '__name__', 'node')}Keys", __config__=STRICT, **fields)


def fail_with(error: dict[str, Any], values: dict[str, Any], keys: dict[str, Key], key: str) -> NoReturn:
    """One line for pydantic's first error: the deepest key its location names, that key's value and type."""
    name, *rest = error["loc"]
    full, value, hint = join(key, name), values.get(name), keys[name].hint
    for part in rest:
        base = strip(hint)
        if isinstance(part, int) and get_origin(base) in (list, Sequence):
            full, value, hint = f"{full}[{part}]", value[part], get_args(base)[0]
        elif isinstance(base, type) and issubclass(base, pydantic.BaseModel) and part in base.model_fields:
            if error["type"] == "extra_forbidden" or part not in value:
                break
            full, value, hint = join(full, part), value[part], keys_of(base)[part].hint
        else:
            break
    if error["type"] == "extra_forbidden":
        raise ConfigError(not_a_key(join(full, str(error["loc"][-1])), full, list(keys_of(strip(hint)))))
    if error["type"] == "missing":
        missing = str(error["loc"][-1])
        raise ConfigError(f"{join(full, missing)} is missing; allowed: {describe(keys_of(strip(hint))[missing].hint)}")
    raise ConfigError(f"{full} is {show(value)}; allowed: {describe(hint)}")


def strip(hint: Any) -> Any:
    return get_args(hint)[0] if get_origin(hint) is Annotated else hint


def resolved(parent: Any, name: str | int, key: str) -> Any:
    try:
        return parent[name]
    except MissingMandatoryValue as e:
        raise ConfigError(f"{key} depends on a value that is not set: {first_line(e)}") from None
    except InterpolationResolutionError as e:
        cause = e.__cause__
        if isinstance(cause, CnnlabError):
            raise cause from None
        raise ConfigError(f"{key}: {first_line(e)}") from None


def plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


# ------------------------------------------------------------------------------------------------- words
def describe(hint: Any) -> str:
    """What a type allows, in words: "a number > 0 or null", "an integer >= 1 and <= 1024", "relu | gelu"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        bounds, text = [], describe(args[0])
        for extra in args[1:]:
            for kind, op, field in ((Ge, ">=", "ge"), (Gt, ">", "gt"), (Le, "<=", "le"), (Lt, "<", "lt")):
                if isinstance(extra, kind):
                    bounds.append(f"{op} {number(getattr(extra, field))}")
            if isinstance(extra, Len):
                text += f" of length {extra.min_length}"
            if isinstance(extra, Words):
                text += f" ({extra.text})"
        return f"{text} {' and '.join(bounds)}" if bounds else text
    if origin is Literal:
        return " | ".join("null" if a is None else str(a).lower() if isinstance(a, bool) else str(a) for a in args)
    if origin in (Union, types.UnionType):
        if all(a is bool or get_origin(a) is Literal for a in args):  # choices: auto | true | false
            return " | ".join("true | false" if a is bool else describe(a) for a in args)
        return " or ".join(describe(a) for a in args)
    if origin in (list, Sequence):
        return f"a list of {plural(describe(args[0]))}"
    if hint is type(None):
        return "null"
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        return f"a node of {', '.join(hint.model_fields)}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def number(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def plural(text: str) -> str:
    return text.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")


def show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def not_a_key(key: str, parent: str, allowed: list[str]) -> str:
    """The one line for a key its parent (a dotted key; "" for the root) does not have."""
    return f"{key} is not a key of {parent or 'the config'}; allowed keys: {', '.join(allowed)}"


def join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
