"""Checkpoints with ``torch.distributed.checkpoint``: resharding-friendly and atomic.

A checkpoint is a DCP directory ``step_NNNNNNN`` holding the student, the teacher, the
optimizer (keyed by parameter names, so a checkpoint written by N ranks loads on M), the
iteration, the EMA centers and the RNG state. It is written under a temporary name and
renamed when complete, and ``latest`` (a small file, replaced atomically) names the last
complete one: a save killed half-way leaves the previous checkpoint the latest.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from manifests.atomic import write_bytes_atomic
from training.ssl_meta_arch import SSLMetaArch

LATEST = "latest"
_STEP = re.compile(r"^step_(\d+)$")


def _is_main() -> bool:
    return not _distributed() or dist.get_rank() == 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


@contextmanager
def _single_process_quietly() -> Iterator[None]:
    """DCP warns at every save of one process that it assumes one process: it is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _state(model: SSLMetaArch, optimizer: torch.optim.Optimizer, iteration: int) -> dict:
    model_state, optim_state = get_state_dict(model, optimizer)
    return {
        "model": model_state,
        "optimizer": optim_state,
        "iteration": torch.tensor(iteration),
        "dino_center": model.dino_center.center,
        "ibot_center": model.ibot_center.center,
        "rng": torch.get_rng_state(),
    }


def save_checkpoint(root: str | Path, model: SSLMetaArch, optimizer, iteration: int) -> Path:
    """Save after ``iteration`` completed iterations; returns the checkpoint directory."""
    root = Path(root)
    final = root / f"step_{iteration:07d}"
    tmp = root / f"{final.name}.tmp"
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    with _single_process_quietly():
        dcp.save(_state(model, optimizer, iteration), checkpoint_id=str(tmp))
    _barrier()
    if _is_main():
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_bytes_atomic(root / LATEST, final.name.encode())
    _barrier()
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if _STEP.match(path.name) and path.is_dir() else None


def load_checkpoint(path: str | Path, model: SSLMetaArch, optimizer) -> int:
    """Restore everything saved into ``model`` and ``optimizer``; returns the iteration."""
    state = _state(model, optimizer, 0)
    with _single_process_quietly():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    model.dino_center.center.copy_(state["dino_center"])
    model.ibot_center.center.copy_(state["ibot_center"])
    torch.set_rng_state(state["rng"])
    return int(state["iteration"])
