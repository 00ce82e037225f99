"""Checkpoints with ``torch.distributed.checkpoint``: resharding-friendly and atomic.

A checkpoint is a DCP directory ``step_NNNNNNN`` holding the student, the teacher, the
optimizer (keyed by parameter names, so a checkpoint written by N ranks loads on M), the
iteration, the EMA centers and the RNG state. It is written under a temporary name and
renamed when complete, and ``latest`` (a small file, replaced atomically) names the last
complete one: a save killed half-way leaves the previous checkpoint the latest.
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from manifests.atomic import write_bytes_atomic
from training.models.vision_transformer import resample_position_grid
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


def checkpoint_iteration(path: str | Path) -> int:
    """The completed iterations a checkpoint directory holds, from its name."""
    return int(_STEP.match(Path(path).name).group(1))


def load_checkpoint(path: str | Path, model: SSLMetaArch, optimizer) -> int:
    """Restore everything saved into ``model`` and ``optimizer``; returns the iteration.

    A checkpoint written at another position grid (the phase before a high-resolution
    phase) loads too: its position embeddings, and their AdamW moments, are resampled to
    this model's grid."""
    state = _state(model, optimizer, 0)
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    regridded = _load_saved_grids(state, saved)
    with _single_process_quietly():
        dcp.load(state, checkpoint_id=str(path))
    for container, key, current in regridded:
        container[key] = _regrid(container[key], current, nonnegative=key == "exp_avg_sq")
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    model.dino_center.center.copy_(state["dino_center"])
    model.ibot_center.center.copy_(state["ibot_center"])
    torch.set_rng_state(state["rng"])
    return int(state["iteration"])


def load_submodules(path: str | Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load the weights saved for each ``name`` of ``modules`` (e.g. ``teacher.dino_head``,
    a name in the checkpoint's model) into that module, and nothing else."""
    state = {f"{name}.{key}": value for name, module in modules.items()
             for key, value in module.state_dict().items()}  # fmt: skip
    with _single_process_quietly():
        dcp.load({"model": state}, checkpoint_id=str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                if k.startswith(prefix)})  # fmt: skip


def _load_saved_grids(state: dict, saved: dict, prefix: str = "") -> list[tuple[dict, str, Any]]:
    """Where a position embedding (or a moment of it) was saved at another shape, put a
    full tensor of the saved shape in its place for DCP to load into; returns (dict, key,
    the tensor it replaced) for each."""
    found = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _load_saved_grids(value, saved, f"{name}.")
        elif torch.is_tensor(value) and "pos_embed" in name and name in saved:
            shape = tuple(saved[name].size)
            if shape != tuple(value.shape):
                state[key] = torch.zeros(shape, dtype=value.dtype)
                found.append((state, key, value))
    return found


def _regrid(loaded: torch.Tensor, current: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    """``loaded`` (1, 1 + g*g, D) resampled to ``current``'s grid, laid out as it is (a
    second moment clamped at 0: bicubic overshoots)."""
    rows = math.isqrt(current.shape[1] - 1)
    resampled = resample_position_grid(loaded, rows, rows)
    if nonnegative:
        resampled = resampled.clamp_min(0)
    if isinstance(current, DTensor):
        return distribute_tensor(resampled.to(current.device), current.device_mesh,
                                 current.placements)  # fmt: skip
    return resampled.to(current.device)
