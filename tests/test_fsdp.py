"""FSDP2 on CPU: two gloo processes train and checkpoint; one process resumes that checkpoint."""

from __future__ import annotations

import json
import os
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import torch.multiprocessing as mp

from manifests.config import load_config
from pipelines.demo.synthetic_images import encode, make_photo
from training import train as trainer
from training.config import TrainConfig

OVERRIDES = ["epochs=1", "iters_per_epoch=4", "log_every=1", "checkpoint_every=2",
             "data.batch_size=2", "data.num_workers=0", "crops.n_local=2"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, manifest: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    config = load_config(
        TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES + ["iters_per_epoch=2"]
    )
    config.iters_per_epoch = 4  # the schedule of the whole run; stop after the first checkpoint
    real_run = trainer._run

    def first_two(config_, model, optimizer, schedules, batches, iterations, *rest):
        return real_run(config_, model, optimizer, schedules, batches, range(0, 2), *rest)

    trainer._run = first_two
    try:
        trainer.train(config, [manifest], out, progress=False)
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def test_two_rank_checkpoint_resumes_in_one_process(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"{i}.jpg").write_bytes(encode(make_photo(i, 72, 64)))
    pq.write_table(
        pa.table({"path": [f"images/{i}.jpg" for i in range(8)]}), tmp_path / "m.parquet"
    )
    out = tmp_path / "run"
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path / "m.parquet"), str(out)), nprocs=2)
    assert (out / "checkpoints" / "latest").read_text() == "step_0000002"

    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    metrics = trainer.train(config, [str(tmp_path / "m.parquet")], out, progress=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3, 4]
    assert metrics["iteration"] == 4 and all(abs(m["loss"]) < 1e6 for m in lines)
    assert (out / "teacher_backbone.pth").exists()
