"""Process groups and FSDP2 sharding.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), training joins a process group:
NCCL on GPUs, gloo on CPU. The student and the teacher are sharded with FSDP2
(``fully_shard``) block by block, heads and backbone as units, each resharded after its
forward (the teacher has no backward that would reshard it); with mixed precision the
parameters compute in bfloat16 and reduce gradients in float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from training.ssl_meta_arch import SSLMetaArch


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group torchrun describes; a plain run is rank 0 of 1."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
        return Dist(rank, world, device)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return Dist(dist.get_rank(), dist.get_world_size(), torch.device("cuda", local))
    dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device("cpu"))


def shard(model: SSLMetaArch, mixed_precision: bool) -> None:
    """FSDP2-shard student, teacher and Gram teacher in place."""
    gram = [model.gram_teacher] if model.config.gram.enabled else []
    for nets in (model.student, model.teacher, *gram):
        shard_networks(nets, mixed_precision)


def shard_networks(nets: torch.nn.ModuleDict, mixed_precision: bool) -> None:
    """FSDP2-shard one side's networks in place (each block, each head, then the rest)."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    for block in nets["backbone"].blocks:
        fully_shard(block, mp_policy=policy, reshard_after_forward=True)
    for module in nets.values():
        fully_shard(module, mp_policy=policy, reshard_after_forward=True)
    register_fsdp_forward_method(nets["backbone"], "forward_features")
