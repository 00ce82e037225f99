"""The README's commands and links: what a new user copies must work as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(module: str) -> list[list[str]]:
    """The README's ``python -m MODULE ...`` commands (continuation lines joined)."""
    text = README.read_text().replace("\\\n", " ")
    return [shlex.split(m) for m in re.findall(rf"python -m {re.escape(module)} [^\n`]*", text)]


def test_the_readme_links_only_into_the_repository():
    links = re.findall(r"\]\(([^)#]+)\)|`(\.\./[^`]+)`", README.read_text())
    outside = [a or b for a, b in links if (a or b).startswith("..") or "://" in (a or b)]
    assert outside == []


def test_the_readme_trains_on_lvd_manifests_not_on_build_directories():
    outs = {c[c.index("--out") + 1] for c in _commands("pipelines.build_lvd") if "--out" in c}
    trains = [c for c in _commands("training.train") if "--manifest" in c]
    assert outs and trains
    for command in trains:
        manifest = command[command.index("--manifest") + 1]
        assert manifest not in outs, f"{manifest} is a build directory: {' '.join(command)}"
