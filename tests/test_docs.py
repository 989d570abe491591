"""Docs that cannot rot: every cnnlab command in the README and the guide composes (an option or key that no longer
exists fails here), every local link and anchor resolves, and no in-house label reaches a reader."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import ROOT, make_cfg
from hydra.core.override_parser.overrides_parser import OverridesParser

from cnnlab.config.compose_errors import compositions

COMMANDS = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
ENTRY = {"cnnlab.run": "config", "cnnlab-run": "config", "cnnlab.evaluate": "evaluate", "cnnlab-evaluate": "evaluate"}


def commands() -> list[tuple[str, str, list[str]]]:
    """(where, config name, overrides) of each command line in a code block that runs cnnlab.run or evaluate."""
    found = []
    for page in COMMANDS:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if not line.startswith("    ") or not any(name in line for name in ENTRY):
                continue
            words = shlex.split(re.sub(r"<[^>]*>", "x", line).replace("[", "").replace("]", ""), comments=True)
            entry = next((w for w in words if w in ENTRY), None)
            if entry is None or "--config-dir" in words or "-sc" in words or "--help" in words:
                continue
            args = words[words.index(entry) + 1:]
            overrides = [w for i, w in enumerate(args) if "=" in w and not w.startswith("-")
                         and not (i and args[i - 1] == "--cfg")]
            found.append((f"{page.relative_to(ROOT)}:{number}", ENTRY[entry], overrides))
    return found


COMMAND_LINES = commands()


def test_the_docs_show_commands_to_check() -> None:
    assert len(COMMAND_LINES) > 15


@pytest.mark.parametrize("where,config_name,overrides", COMMAND_LINES, ids=[c[0] for c in COMMAND_LINES])
def test_every_command_in_the_readme_and_the_guide_composes(where: str, config_name: str,
                                                           overrides: list[str]) -> None:
    """(Seen to fail: the tour's first command with model=vgg_compactx.)"""
    parsed = OverridesParser.create().parse_overrides(overrides)
    for concrete in compositions(parsed):
        make_cfg(*concrete, config_name=config_name, hydra=True)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings."""
    headings = [line.lstrip("#").strip() for line in page.read_text().splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_local_link_and_anchor_resolves(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in anchors(linked), f"{page.name}: {target}"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_in_house_label_reaches_a_reader(page: Path) -> None:
    assert not re.search(r"\bCPU-[A-Z]\b|moonshot", page.read_text()), page.name
