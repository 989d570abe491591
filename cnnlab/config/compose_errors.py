"""Composition errors (an unknown config in a group, a key the config lacks, an override that does not parse, a
Hydra setting of the wrong type) in one line, like every other bad input: `error: <what>; allowed: <what is>`, and
exit code 1.

Before `hydra.main` starts, the entry points compose the command line's config once with Hydra's public compose
API (each value of a sweep over a config group, and the first value of any other sweep), and report what fails in
one line. What composes here composes in `hydra.main` too; anything this check cannot see (a --config-path
relative to a module, a flag it does not know) is left to Hydra, which reports it in its own words.
HYDRA_FULL_ERROR=1 skips the check and gives Hydra's full report.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from cnnlab import CONF_DIR
from cnnlab.config.check import first_line, not_a_key


def hydra_arguments() -> argparse.ArgumentParser:
    """Hydra's command line (its documented flags), to tell the overrides from the flags."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags, extra in ((("--config-path", "-cp"), {}), (("--config-name", "-cn"), {}),
                         (("--config-dir", "-cd"), {}), (("--cfg", "-c"), {}), (("--package", "-p"), {}),
                         (("--info", "-i"), {"nargs": "?", "const": "all"}),
                         (("--experimental-rerun",), {})):
        parser.add_argument(*flags, **extra)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--run", "-r"), ("--multirun", "-m"),
                  ("--shell-completion", "-sc"), ("--resolve",)):
        parser.add_argument(*flags, action="store_true")
    parser.add_argument("overrides", nargs="*")
    return parser


def check_composes(argv: list[str], config_name: str) -> None:
    """Compose what `argv` asks for, as Hydra will; on failure print one line and exit 1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    args, unknown = hydra_arguments().parse_known_args(argv)
    if unknown or args.config_path or args.help or args.hydra_help or args.version or args.shell_completion \
            or args.info or args.experimental_rerun:
        return  # Hydra's own business
    refuse_paths_as_choices(args.overrides)
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except OverrideParseException as error:
        sys.exit(f"error: {one_line(error)}")
    search = [f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]"] if args.config_dir else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for concrete in compositions(overrides):
            try:
                compose(config_name=args.config_name or config_name, overrides=[*search, *concrete],
                        return_hydra_config=True)
            except Exception as error:  # noqa: BLE001 - whatever composing raises is the user's input
                sys.exit(f"error: {one_line(error)}")


def compositions(overrides: list[Override]) -> list[list[str]]:
    """The override lists to compose: each sweep at its first value, then each further value of a sweep over a
    config group (one composition each: a name that is not a config fails there)."""
    def values(override: Override) -> list[str]:
        if not override.is_sweep_override():
            return [override.input_line.partition("=")[2]] if "=" in override.input_line else [""]
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # noqa: BLE001 - an interval (an Optuna search): composed at its start
            return [str(override.value().start)]

    def line(override: Override, value: str) -> str:
        return f"{override.get_key_element()}={value}" if "=" in override.input_line else override.input_line

    options = [values(o) for o in overrides]
    first = [line(o, v[0]) for o, v in zip(overrides, options, strict=True)]
    runs = [first]
    for i, (override, choices) in enumerate(zip(overrides, options, strict=True)):
        if "/" in override.key_or_group or override.key_or_group in group_names():
            runs += [[*first[:i], line(override, value), *first[i + 1:]] for value in choices[1:]]
    return runs


def group_names() -> set[str]:
    return {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}


def refuse_paths_as_choices(overrides: list[str]) -> None:
    """A group's choice is a config's name (nested ones included: experiment=cifar/small), never a path out of the
    group: `model=../experiment/cpu_fast` would load another group's file as a model and fail on something else.
    Refused in one line, as typed."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in group_names() and (value.startswith("/") or ".." in value.replace("\\", "/").split("/")):
            options = ", ".join(sorted(p.stem for p in (Path(CONF_DIR) / key).glob("*.yaml")))
            sys.exit(f"error: {key}={value} is not a config of {key}; allowed: {options}")


def hydra_setting(error: Exception) -> str | None:
    """The hydra.* key that `error` (an OmegaConf error) is about, if any."""
    key = getattr(error, "full_key", None) if isinstance(error, OmegaConfBaseException) else None
    return key if isinstance(key, str) and key.startswith("hydra.") else None


def one_line(error: Exception) -> str:
    cause = error.__cause__
    if key := hydra_setting(error):
        return cannot_resolve(key, error)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        options = error.options or options_of(group)  # Hydra lists none for a name in a list: optim=[a]
        if options:
            return f"{group}={name} is not a config of {group}; allowed: {', '.join(options)}"
    if isinstance(error, OverrideParseException):
        return f"cannot parse the override '{error.override}': {joined(error.message)}"
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and isinstance(cause.parent_node, DictConfig) \
            and cause.full_key:
        parent, _, _ = cause.full_key.rpartition(".")
        allowed = [str(k) for k in cause.parent_node if parent or k != "hydra"]
        if allowed:
            return f"{not_a_key(cause.full_key, parent, allowed)} (a new key: +{cause.full_key}=...)"
    if isinstance(cause, ValidationError) and cause.full_key:  # a wrong type for a key of Hydra's own schema
        return f"{cause.full_key}: {first_line(cause)}"
    text = joined(str(error).split("Config search path:")[0])
    if isinstance(cause, OmegaConfBaseException):
        text += f" ({joined(cause.msg)})"
    if isinstance(error, ConfigCompositionException):
        return text
    override = applying(error)
    return f"cannot apply the override '{override}': {text}" if override else f"cannot compose the config: {text}"


def options_of(group: str) -> list[str]:
    hydra = GlobalHydra.instance()
    return hydra.config_loader().get_group_options(group) if hydra.is_initialized() else []


def cannot_resolve(key: str, error: Exception) -> str:
    return f"cannot resolve {key}: {first_line(error)}"


def applying(error: Exception) -> str | None:
    """The override Hydra was applying when `error` was raised (an OmegaConf error Hydra does not wrap)."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        override = frame.f_locals.get("override")
        if isinstance(override, Override) and override.input_line:
            return override.input_line
    return None


def joined(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())
