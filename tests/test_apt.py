import subprocess

import pytest

from pipelines import apt


def test_apt_install_refuses_without_root_and_names_the_command(monkeypatch):
    monkeypatch.setattr(apt.os, "geteuid", lambda: 1000)
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(SystemExit, match=r"^nginx missing: apt-get install nginx-light a-b, or"):
        apt.apt_install(["nginx-light", "a-b"], "nginx", otherwise=", or pass --server aiohttp")
    assert ran == []  # nothing was run
