"""Hydra's own composition errors (an unknown config in a group, a key the config lacks, an override it cannot
parse, a hydra.* setting it cannot resolve) in one line, like every other bad input: `error: <what>; allowed:
<what is>`, and exit code 1.

Hydra prints these errors itself, over several lines, from `hydra._internal.utils.run_and_report`, which wraps
every step of its `main`; there is no public hook. So the entry points wrap that function: an error raised while
Hydra composes the config becomes one line, and everything else (the task's own errors) passes to Hydra as
before. HYDRA_FULL_ERROR=1 still gives Hydra's full report.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import hydra._internal.utils as hydra_utils
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from cnnlab.config.check import first_line, not_a_key


def report_compose_errors_in_one_line() -> None:
    report = hydra_utils.run_and_report
    if getattr(report, "one_line", False):
        return

    def run_and_report(func: Callable[[], Any]) -> Any:
        def composing_in_one_line() -> Any:
            try:
                return func()
            except Exception as error:
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or not composing(error):
                    raise
                sys.exit(f"error: {one_line(error)}")

        return report(composing_in_one_line)

    run_and_report.one_line = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def composing(error: Exception) -> bool:
    """Raised while Hydra parses the overrides, composes the config or resolves its own settings (hydra.*) to set
    up the job, not by the task it runs."""
    if isinstance(error, ConfigCompositionException | OverrideParseException) or hydra_setting(error):
        return True
    loader = os.path.join("hydra", "_internal", "config_loader_impl.py")
    return any(frame.filename.endswith(loader) for frame in traceback.extract_tb(error.__traceback__))


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
