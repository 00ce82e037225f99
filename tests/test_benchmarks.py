"""Every benchmark still runs: each one's ``--quick`` mode (tiny sizes, seconds), as a
subprocess, printing the JSON it promises. Figures are not checked here (the benchmarks
measure them, never the tests); that the scripts run and say something is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# script -> its extra arguments and keys its JSON must hold
QUICK = {
    "build_engines.py": ([], ["engines"]),
    "crawl_throughput.py": ([], ["ours", "pixel_limit", "ratio_ours_to_pixel_limit"]),
    "crawl_web.py": ([], ["network"]),
    "curation_value.py": ([], ["arms", "targets"]),
    "dedup_quality.py": ([], ["routes"]),
    "high_res_phase.py": ([], ["arms", "knn_gain_at_scaled_size", "s_per_iteration_first_phase"]),
    "distillation.py": ([], ["scratch", "distilled", "teacher", "distilled_minus_scratch"]),
    "gpu_check.py": (["--device", "cpu"], ["attention", "train_step", "centering", "faiss"]),
    "inventory_checksums.py": ([], []),
    "pool_scale.py": ([], []),
    "resize_methods.py": ([], ["640x480_to_512x384"]),
    "retrieval.py": ([], ["recall_at_4", "speedup_vs_exact"]),
    "safety.py": ([], ["throughput", "quality"]),
    "ssl_fashion_mnist.py": ([], ["knn_top1_k20_ssl", "knn_top1_k20_raw_pixels"]),
    "train_step.py": ([], ["speedup_vs_plain"]),
}
SLOW = {"curation_value.py": 600}  # seconds; builds three pools and trains 13 arms
# run by ssl_fashion_mnist.py --peer lightly in lightly's own environment (see its docstring)
NEEDS_PEER = {"ssl_peer_lightly.py"}


def _last_json(stdout: str) -> dict:
    """The last JSON object a benchmark printed (some print progress lines of JSON first)."""
    lines = stdout.splitlines()
    for start in reversed(range(len(lines))):
        if lines[start].startswith("{"):
            try:
                return json.loads("\n".join(lines[start:]))
            except json.JSONDecodeError:
                continue
    raise AssertionError(f"no JSON object in {stdout[-500:]!r}")


def test_every_benchmark_has_a_quick_run_here():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(QUICK) | NEEDS_PEER


@pytest.mark.parametrize("script", sorted(QUICK))
def test_the_benchmark_runs_in_its_quick_mode(script, tmp_path):
    extra, keys = QUICK[script]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    command = [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *extra]
    timeout = SLOW.get(script, 240)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = _last_json(proc.stdout)
    assert figures and all(key in figures for key in keys), list(figures)


@pytest.mark.skipif(
    not os.environ.get("LVD_PEER_PYTHON"),
    reason="set LVD_PEER_PYTHON to a python with lightly (see ssl_peer_lightly.py)",
)
def test_the_peer_runs_beside_ours_in_its_quick_mode(tmp_path):
    peer = os.environ["LVD_PEER_PYTHON"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ssl_fashion_mnist.py"),
                           "--quick", "--peer", "lightly", "--peer-python", peer,
                           "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "knn_points_over_peer" in _last_json(proc.stdout)
