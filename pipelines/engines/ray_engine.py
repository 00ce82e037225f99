"""The Ray engine: shard tasks as Ray tasks, on a running cluster (``address="auto"``,
as under ``ray submit``) or on a local instance; the small global steps (union-find,
cluster sampling) run in the driver.

A task asks for a GPU only where the cluster has GPUs, so the same pipeline runs on a
laptop's Ray and on the GPU cluster of ``pipelines/cluster/gpu.yaml``: embedding shards,
index parts and k-means then land on GPU workers, where faiss sees a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from curation.tasks import ShardRunner, ShardTasks

log = logging.getLogger(__name__)


class RayEngine:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import ray

        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                     configure_logging=False)  # fmt: skip
        self.has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        log.info("ray: %s", ray.cluster_resources())

    def _remote(self, fn: Callable[..., Any], gpus: float):
        return self._ray.remote(fn).options(num_cpus=1, num_gpus=gpus if self.has_gpus else 0)

    def runner(self, stage: str) -> ShardRunner:
        return self.run_tasks

    def run_tasks(self, work: ShardTasks, progress: bool = True) -> None:
        """One Ray task per shard task (``processes``: Ray schedules by CPUs and GPUs)."""
        remote = self._remote(work.fn, work.gpus)
        pending = [remote.remote(*task) for task in work.tasks]
        with tqdm(total=len(pending), unit="shard", desc=f"{work.desc} (ray)",
                  disable=not progress) as bar:  # fmt: skip
            while pending:
                done, pending = self._ray.wait(pending, num_returns=1)
                self._get(done)
                bar.update(len(done))

    def _get(self, refs):
        """Results; a task's error is raised as its own type (a ManifestError stays one,
        for the CLI's clear message), its remote traceback kept in the message."""
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def close(self) -> None:
        if self._owns_ray:
            self._ray.shutdown()
