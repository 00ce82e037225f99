"""Debian packages that the demo and the benchmarks read data or tools from."""

from __future__ import annotations

import os
import subprocess


def apt_install(packages: list[str], missing: str, otherwise: str = "") -> None:
    """apt-get install ``packages`` as root; anyone else gets an exit naming ``missing``
    (what was looked for), the command to run and ``otherwise``, a way around it."""
    if os.geteuid() != 0:
        raise SystemExit(f"{missing} missing: apt-get install {' '.join(packages)}{otherwise}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
