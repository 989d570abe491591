"""The value types of config keys. Each constructor annotates its parameters with these, so a key's type and
range are declared once, where the key is used; cnnlab.config checks every YAML node against its `_target_`'s
signature with pydantic before anything is built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, StringConstraints

# A config value is exactly its type (no "1" for 1, no 1 for true), every number finite, no key unknown.
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class Options(BaseModel):
    """A group of keys that is not built from a `_target_` (trainer.ema, an entry of trainer.param_groups)."""

    model_config = STRICT

    @classmethod
    def of(cls, value: Any) -> Any:
        """`value` as this group: itself, or built from the mapping a config gives."""
        return value if isinstance(value, cls) else cls(**value)


@dataclass(frozen=True)
class Words:
    """What a string pattern allows, in words (for messages)."""

    text: str


@dataclass(frozen=True)
class OneOf:
    """Annotated marker of a key that holds a node: built from one of `targets` (None: an empty node, nothing
    built). It is also the allow-list of the `_target_`s a recorded config may name."""

    targets: tuple[Any, ...]

    def __init__(self, *targets: Any) -> None:
        object.__setattr__(self, "targets", targets)


def text(pattern: str, words: str) -> Any:
    """A string that matches `pattern` whole."""
    return Annotated[str, StringConstraints(pattern=f"^(?:{pattern})$"), Words(words)]


PosInt = Annotated[int, Ge(1)]
NonNegInt = Annotated[int, Ge(0)]
PosFloat = Annotated[float, Gt(0)]
NonNegFloat = Annotated[float, Ge(0)]
Fraction = Annotated[float, Ge(0), Lt(1)]  # dropout, smoothing, momentum: 1 would mean nothing is learnt
Ratio = Annotated[float, Ge(0), Le(1)]
Seed = Annotated[int, Ge(0), Le(2**32 - 1)]  # numpy's range; the loaders derive per-epoch seeds from it
ImageSize = Annotated[int, Ge(1), Le(1024)]  # pixels a side: the whole dataset is held in memory as uint8
SampleCount = Annotated[int, Ge(1), Le(10_000_000)]
ClassCount = Annotated[int, Ge(1), Le(100_000)]
Pixels = Annotated[int, Ge(0), Le(1024)]  # a crop's padding or a cutout's side
NonEmptyPath = text(r".+", "a non-empty path")
