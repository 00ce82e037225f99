"""The GPU paths, checked and timed on one CUDA device; prints one JSON object.

- attention: xFormers' block-diagonal kernel over all crops equals PyTorch SDPA per crop
  size (max abs difference, bf16 and fp32);
- train_step: ViT-L/14 (the vitl14 recipe) at the official 32 images per GPU, packed vs
  one forward per crop size, bf16 autocast vs fp32: seconds per step, images/s, peak GPU
  memory;
- centering: the EMA center follows the model to CUDA and is updated there;
- faiss: k-means of 1M x 1024 into 16k centroids and an IVF search, GPU vs CPU (the CPU
  timed on one k-means iteration and a slice of the queries, scaled: the whole CPU run
  would take longer than this script may).

Meant to finish in under 8 minutes on one H100/H200; without CUDA it exits non-zero with
one line. ``--quick`` shrinks every size for a smoke run; ``--device cpu`` runs the same
checks on the CPU (what can run there: no xFormers, no faiss GPU), so that the test suite
keeps the script working on machines without a GPU.

    python benchmarks/gpu_check.py [--quick] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import numpy as np
import torch

from manifests.config import describe, load_config, parse_with_quick
from training.config import TrainConfig
from training.layers import attention as attention_module
from training.layers.attention import Attention
from training.schedules import param_groups
from training.ssl_meta_arch import SSLMetaArch
from training.train import Schedules, train_step

DEVICE = torch.device("cuda")  # --device sets it


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - started)
    return times


def check_attention(quick: bool) -> dict:
    if attention_module.xformers_fmha is None:
        return {"xformers": "not installed"}
    torch.manual_seed(0)
    dim, heads = (256, 4) if quick else (1024, 16)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        attn = Attention(dim, heads).to(DEVICE, dtype)
        shapes = [(2, 257), (8, 50)]  # 2 global crops of 16x16 + cls, 8 local of 7x7 + cls
        x = torch.randn(sum(n * length for n, length in shapes), dim, device=DEVICE, dtype=dtype)
        qkv = attn.qkv(x).split([n * length for n, length in shapes])
        groups = [g.view(n, length, -1) for g, (n, length) in zip(qkv, shapes, strict=True)]
        xformers_out = attn._attend_xformers(groups)
        sdpa_out = [attn._attend_sdpa(g) for g in groups]
        diff = max(float((a - b).abs().max()) for a, b in zip(xformers_out, sdpa_out, strict=True))
        out[str(dtype).removeprefix("torch.")] = {"max_abs_diff": diff}
    return out


def _batch(batch: int, n_local: int, size: int, local: int, grid: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "global_crops": torch.randn(2 * batch, 3, size, size, generator=g).to(DEVICE),
        "local_crops": torch.randn(n_local * batch, 3, local, local, generator=g).to(DEVICE),
        "masks": (torch.rand(2 * batch, grid * grid, generator=g) < 0.3).to(DEVICE),
    }


def _train_variant(config: TrainConfig, data: dict, dtype: torch.dtype | None, steps: int) -> dict:
    torch.manual_seed(0)
    on_gpu = DEVICE.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    model = SSLMetaArch(config.model).to(DEVICE).train()
    optimizer = torch.optim.AdamW(param_groups(model.student, 24))
    schedules = Schedules.build(config, config.data.batch_size)

    def step() -> None:
        train_step(model, optimizer, data, schedules, 100, config.optim.clip_grad, dtype)

    try:
        seconds = statistics.median(_timed(step, steps + 1)[1:])  # the first warms up
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    batch, crops = config.data.batch_size, 2 + config.crops.n_local
    return {"step_s": round(seconds, 3), "images_per_s": round(batch / seconds, 1),
            "crops_per_s": round(batch * crops / seconds, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu
            else None}  # fmt: skip


def check_train_step(quick: bool, steps: int) -> dict:
    overrides = ["model.backbone.depth=2", "data.batch_size=4"] if quick else []
    if quick and DEVICE.type == "cpu":  # the code path, not the ViT-L's figures
        overrides += ["model.backbone.arch=vit_small", "data.batch_size=2", "crops.n_local=2",
                      "crops.global_size=112", "crops.local_size=56",
                      "model.head_prototypes=1024", "model.head_hidden=256"]  # fmt: skip
    config = load_config(TrainConfig, "configs/train/vitl14.yaml", overrides)
    c, batch = config.crops, config.data.batch_size
    data = _batch(batch, c.n_local, c.global_size, c.local_size,
                  c.global_size // config.model.backbone.patch_size)  # fmt: skip
    out: dict = {"batch_per_gpu": batch, "crops_per_image": 2 + c.n_local}
    for packed in (True, False):
        for dtype in (torch.bfloat16, None):
            config.model.packed = packed
            name = f"{'packed' if packed else 'per_size'}_{'bf16' if dtype else 'fp32'}"
            out[name] = _train_variant(config, data, dtype, steps)
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
    with contextlib.suppress(KeyError):
        out["bf16_speedup"] = round(out["packed_fp32"]["step_s"] / out["packed_bf16"]["step_s"], 2)
        out["packing_speedup"] = round(
            out["per_size_bf16"]["step_s"] / out["packed_bf16"]["step_s"], 2
        )
    return out


def check_centering() -> dict:
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                         ["model.centering=ema", "model.backbone.depth=1"])  # fmt: skip
    model = SSLMetaArch(config.model).to(DEVICE).train()
    optimizer = torch.optim.AdamW(param_groups(model.student, 1))
    grid = config.crops.global_size // config.model.backbone.patch_size
    data = _batch(4, config.crops.n_local, config.crops.global_size, config.crops.local_size, grid)
    train_step(model, optimizer, data, Schedules.build(config, 4), 5, 3.0, torch.bfloat16)
    center = model.dino_center.center
    return {"device": str(center.device), "updated": bool(center.abs().sum() > 0)}


def check_faiss(quick: bool) -> dict:
    import faiss

    from curation.index import KMeansConfig, SearchConfig, build_search_index, gpu_count, kmeans
    from curation.index import search as index_search

    gpus = gpu_count()
    if not gpus:
        return {"faiss_gpus": 0, "note": "faiss sees no GPU (faiss-cpu installed?)"}
    n, d, k = (50_000, 128, 256) if quick else (1_000_000, 1024, 16_384)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = {"faiss_gpus": gpus, "n": n, "d": d, "k": k}
    niter = 10
    started = time.perf_counter()
    kmeans(x, KMeansConfig(k=k, niter=niter, max_points_per_centroid=256, use_gpu=True))
    out["kmeans_gpu_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    kmeans(x, KMeansConfig(k=k, niter=1, max_points_per_centroid=256, use_gpu=False))
    cpu_iteration = time.perf_counter() - started
    out["kmeans_cpu_s_for_same_iterations_est"] = round(cpu_iteration * niter, 2)
    out["kmeans_gpu_speedup_est"] = round(cpu_iteration * niter / out["kmeans_gpu_s"], 1)
    queries = x[: 10_000 if not quick else 2_000]
    for name, use_gpu in (("gpu", True), ("cpu", False)):
        config = SearchConfig(exact_max=0, factory=f"IVF{int(4 * np.sqrt(n))},PQ{d // 8}x8",
                              use_gpu=use_gpu)  # fmt: skip
        started = time.perf_counter()
        index = build_search_index(x, config)
        out[f"ivf_build_{name}_s"] = round(time.perf_counter() - started, 2)
        part = queries if use_gpu else queries[: len(queries) // 10]
        started = time.perf_counter()
        index_search(index, part, 64)
        per_query = (time.perf_counter() - started) / len(part)
        out[f"ivf_search_{name}_queries_per_s"] = round(1 / per_query, 1)
        del index
    out["faiss_version"] = faiss.__version__
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--steps", type=int, default=3, help="timed train steps per variant")
    p.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: the same checks where they can run, as the test suite does",
    )
    args = parse_with_quick(p, {"steps": 1})
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it where one is, or --device cpu",
              file=sys.stderr)  # fmt: skip
        return 2
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    report = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    for name, check in (("attention", lambda: check_attention(args.quick)),
                        ("train_step", lambda: check_train_step(args.quick, args.steps)),
                        ("centering", check_centering),
                        ("faiss", lambda: check_faiss(args.quick))):  # fmt: skip
        section = time.perf_counter()
        try:
            report[name] = check()
        except Exception as exc:  # noqa: BLE001 - report every section, whatever fails
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["seconds"] = round(time.perf_counter() - section, 1)
        print(json.dumps({name: report[name]}), file=sys.stderr, flush=True)  # progress
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
