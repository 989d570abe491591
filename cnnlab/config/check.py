"""Checks a config tree against a schema of dataclasses, in one line per fault: the key, the value, what is
allowed.

A schema field's type says what is allowed: bool, int, float, str, Literal[...], list[...], X | None, a union
of dataclasses told apart by their `_target_`, and `Annotated[...]` with a `Range`, a `Length`, a `Pattern` or `LINKED`
(a key that normally interpolates another, checked at its home). Nothing here builds anything.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from cnnlab import CnnlabError


class ConfigError(CnnlabError):
    """A config value that the schema does not allow."""


@dataclass(frozen=True)
class Range:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def __str__(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        parts = [f"{op} {bound}" if isinstance(bound, int) else f"{op} {bound:g}" for op, bound in bounds
                 if bound is not None]
        return " and ".join(parts)


@dataclass(frozen=True)
class Length:
    n: int


@dataclass(frozen=True)
class Pattern:
    regex: str
    text: str  # what the pattern allows, in words

    def __str__(self) -> str:
        return f"({self.text})"


LINKED = "linked"  # Annotated marker: skip when the value interpolates another key (checked there)


def fail(key: str, value: Any, hint: Any) -> typing.NoReturn:
    raise ConfigError(f"{key} is {show(value)}; allowed: {describe(hint)}")


def show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return "null" if value is None else repr(value)


def describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        base, extras = args[0], [a for a in args[1:] if a != LINKED]
        text = describe(base)
        for extra in extras:
            text += f" of length {extra.n}" if isinstance(extra, Length) else f" {extra}"
        return text
    if origin is Literal:
        return " | ".join(show_choice(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is list:
        return f"a list of {plural(describe(args[0]))}"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a {hint.__name__} node"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def plural(text: str) -> str:
    return text.replace("an integer", "integers").replace("a number", "numbers").replace("a string", "strings")


def show_choice(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_node(node: Any, schema: type, key: str) -> None:
    """Check a DictConfig (or dict) against a dataclass schema: no unknown key, none missing, every value allowed.
    A field with a default (a key added after configs were recorded with checkpoints) may be absent."""
    if not isinstance(node, DictConfig | dict):
        fail(key, node, schema)
    hints = typing.get_type_hints(schema, include_extras=True)
    fields = dataclasses.fields(schema)
    unknown = [k for k in node if k not in hints]
    if unknown:
        where = f"{key} ({target_of(schema)})" if target_of(schema) else key
        raise ConfigError(not_a_key(join(key, unknown[0]), where, [f.name for f in fields]))
    for field in fields:
        name = field.name
        if name not in node.keys():  # noqa: SIM118 - a DictConfig counts a ??? value as not `in` it
            if field.default is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{join(key, name)} is missing; allowed: {describe(hints[name])}")
        check_value(node, name, hints[name], join(key, name))


def check_value(parent: Any, name: str | int, hint: Any, key: str) -> None:
    if isinstance(parent, DictConfig | ListConfig):
        if OmegaConf.is_missing(parent, name):
            raise ConfigError(f"{key} is not set; give it, for example {key}=<{describe(hint)}>")
        if LINKED in get_args(hint) and OmegaConf.is_interpolation(parent, name):
            return
    value = resolved(parent, name, key)
    check(value, hint, key)


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


def check(value: Any, hint: Any, key: str) -> None:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        if args[0] in (bool, int, float, str) and not is_instance(value, args[0]):
            fail(key, value, hint)  # the whole allowed range, not just the type
        check(value, args[0], key)
        for extra in args[1:]:
            if isinstance(extra, Range) and not extra.holds(value):
                fail(key, value, hint)
            if isinstance(extra, Length) and len(value) != extra.n:
                fail(key, value, hint)
            if isinstance(extra, Pattern) and not re.fullmatch(extra.regex, value):
                fail(key, value, hint)
    elif origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            fail(key, value, hint)
    elif origin in (Union, types.UnionType):
        check_union(value, hint, key)
    elif origin is list:
        if not isinstance(value, ListConfig | list):
            fail(key, value, hint)
        for i in range(len(value)):
            check_value(value, i, args[0], f"{key}[{i}]")
    elif dataclasses.is_dataclass(hint):
        check_node(value, hint, key)
    elif hint is type(None):
        if value is not None:
            fail(key, value, hint)
    elif not is_instance(value, hint):
        fail(key, value, hint)


def check_union(value: Any, hint: Any, key: str) -> None:
    options = get_args(hint)
    nodes = [o for o in options if dataclasses.is_dataclass(o)]
    if nodes and isinstance(value, DictConfig | dict):  # a union of nodes: the _target_ picks the schema
        target = value.get("_target_")
        chosen = [n for n in nodes if target_of(n) == target]
        if not chosen:
            allowed = ", ".join(target_of(n) or "none (an empty node)" for n in nodes)
            raise ConfigError(f"{join(key, '_target_')} is {show(target)}; allowed: {allowed}")
        check_node(value, chosen[0], key)
        return
    for option in options:
        try:
            check(value, option, key)
            return
        except ConfigError:
            continue
    fail(key, value, hint)


def is_instance(value: Any, kind: type) -> bool:
    if kind is float:  # every number a config holds is finite: nan and inf train nothing and mean nothing
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def target_of(schema: type) -> str | None:
    hint = typing.get_type_hints(schema).get("_target_")
    return get_args(hint)[0] if hint is not None else None


def not_a_key(key: str, parent: str, allowed: list[str]) -> str:
    """The one line for a key its parent (a dotted key; "" for the root) does not have."""
    return f"{key} is not a key of {parent or 'the config'}; allowed keys: {', '.join(allowed)}"


def join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
