"""The train loop end to end on generated images: metrics, a finite loss, a clear NaN stop."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from manifests.config import ConfigError, load_config
from manifests.job import ResumeMismatchError
from pipelines.demo.synthetic_images import encode, make_photo
from training import train as trainer
from training.config import TrainConfig

OVERRIDES = ["epochs=1", "iters_per_epoch=3", "log_every=1", "data.batch_size=4",
             "data.num_workers=0", "model.backbone.arch=vit_small", "crops.n_local=2"]  # fmt: skip


@pytest.fixture
def manifest(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        (images / f"{i}.jpg").write_bytes(encode(make_photo(i, 80, 64)))
    table = pa.table(
        {"id": [str(i) for i in range(8)], "path": [f"images/{i}.jpg" for i in range(8)]}
    )
    pq.write_table(table, tmp_path / "00000.parquet")
    return tmp_path


def test_tiny_recipe_trains_and_logs_every_term(manifest, tmp_path, recwarn):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    metrics = trainer.train(config, [str(manifest)], tmp_path / "run", progress=False)
    assert not [w for w in recwarn if "torch.distributed" in str(w.message)]  # checkpoints: quiet
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2, 3] and metrics == lines[-1]
    for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "lr", "weight_decay",
                "momentum", "teacher_temp", "images_per_s", "dino_target_entropy"):  # fmt: skip
        assert key in metrics
    assert all(0.0 <= m["dino_target_entropy"] <= 1.0 for m in lines)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    weights = torch.load(tmp_path / "run" / "teacher_backbone.pth")
    assert "blocks.0.attn.qkv.weight" in weights
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()  # TensorBoard reads what metrics.jsonl says, step by step
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss/loss")] == [
        (m["iteration"], round(m["loss"], 4)) for m in lines]  # fmt: skip
    assert "schedule/lr" in events.Tags()["scalars"]
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.count("<svg") >= 5 and "dino_loss" in report and "No k-NN measured" in report


def test_non_finite_loss_stops_with_a_clear_message(manifest, tmp_path, monkeypatch):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    real_forward = trainer.SSLMetaArch.forward

    def poisoned(self, batch, *args):
        terms = real_forward(self, batch, *args)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.SSLMetaArch, "forward", poisoned)
    with pytest.raises(trainer.NonFiniteLossError, match=r"iteration 0: loss is nan \(dino_loss="):
        trainer.train(config, [str(manifest)], tmp_path / "run", progress=False)


@pytest.mark.parametrize("name", ["vits14", "vitb14", "vitl14", "vitg14", "tiny_cpu"])
def test_shipped_recipes_load(name):
    config = load_config(TrainConfig, f"configs/train/{name}.yaml")
    total = config.epochs * config.iters_per_epoch
    assert config.checkpoint_every <= total // 4  # an interrupted run keeps its progress
    assert config.model.backbone.patch_size == 14 and config.optim.clip_grad == 3.0
    if name in ("vitl14", "vitg14"):
        assert config.model.centering == "sinkhorn_knopp" and config.teacher.momentum == 0.994
        assert config.model.head_prototypes == config.model.ibot_prototypes == 131072


def _losses(run_dir) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {m["iteration"]: m["loss"] for m in lines}


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_on_the_same_loss_curve(manifest, tmp_path, monkeypatch, workers):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                         OVERRIDES + ["iters_per_epoch=6", "checkpoint_every=3",
                                      f"data.num_workers={workers}"])  # fmt: skip
    trainer.train(config, [str(manifest)], tmp_path / "straight", progress=False)

    real_step, calls = trainer.train_step, []

    def dies_at_iteration_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", dies_at_iteration_4)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "train_step", real_step)
    (tmp_path / "resumed" / "checkpoints" / "step_0000005.tmp").mkdir()  # a save killed midway
    trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)

    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    for it in (4, 5, 6):
        assert resumed[it] == pytest.approx(straight[it], rel=1e-6), it
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3, 4, 4, 5, 6]


HIGH_RES = OVERRIDES + [
    "epochs=3", "iters_per_epoch=2", "checkpoint_every=100", "model.backbone.depth=2",
    "phases=[{start_epoch: 2, crops: {global_size: 84, local_size: 42}}]",
]  # fmt: skip


@pytest.mark.parametrize("killed_at", [1, 5])  # in the first phase, in the high-res phase
def test_a_high_res_phase_resumes_on_the_same_loss_curve_from_either_phase(
    manifest, tmp_path, monkeypatch, killed_at
):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", HIGH_RES)
    assert [(s.start, s.stop, s.crops.global_size) for s in config.segments()] == [
        (0, 4, 56), (4, 6, 84)]  # fmt: skip
    trainer.train(config, [str(manifest)], tmp_path / "straight", progress=False)
    sizes = []
    real_step = trainer.train_step

    def records_sizes_and_dies(model, optimizer, batch, *args, **kwargs):
        sizes.append(batch["global_crops"].shape[-1])
        if len(sizes) == killed_at + 1:
            raise KeyboardInterrupt("killed")
        return real_step(model, optimizer, batch, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", records_sizes_and_dies)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "train_step", real_step)
    trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)

    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert resumed == pytest.approx(straight, rel=1e-6)
    assert sizes == [56, 56, 56, 56, 84, 84][: killed_at + 1]
    weights = torch.load(tmp_path / "resumed" / "teacher_backbone.pth")
    assert weights["pos_embed"].shape == (1, 1 + 6 * 6, 384)  # the grid of the 84 px phase
    assert torch.equal(
        weights["pos_embed"],
        torch.load(tmp_path / "straight" / "teacher_backbone.pth")["pos_embed"],
    )


def test_the_phase_boundary_resamples_the_learned_grid_and_its_moments(manifest, tmp_path):
    from training.checkpoint import latest_checkpoint, load_checkpoint
    from training.distributed import init_distributed
    from training.models.vision_transformer import resample_position_grid

    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", HIGH_RES[:-1] + ["epochs=2"])
    trainer.train(config, [str(manifest)], tmp_path / "run", progress=False)  # the 56 px phase
    old, old_optim = trainer.build_model(config, init_distributed())
    load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"), old, old_optim)
    new, new_optim = trainer.build_model(config, init_distributed(), img_size=84)
    assert load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"), new,
                           new_optim) == 4  # fmt: skip
    for nets in ("student", "teacher"):
        saved = getattr(old, nets)["backbone"].pos_embed.detach()
        loaded = getattr(new, nets)["backbone"].pos_embed.detach()
        assert loaded.shape == (1, 37, 384)
        assert torch.allclose(loaded, resample_position_grid(saved, 6, 6), atol=1e-6)
        assert torch.equal(loaded[:, 0], saved[:, 0])  # the CLS position is kept
    old_moments = old_optim.state[old.student["backbone"].pos_embed]
    new_moments = new_optim.state[new.student["backbone"].pos_embed]
    second = new_moments["exp_avg_sq"]
    assert second.shape == (1, 37, 384) and (second >= 0).all()
    first = resample_position_grid(old_moments["exp_avg"], 6, 6)
    assert torch.allclose(new_moments["exp_avg"], first, atol=1e-9)
    assert new_moments["step"] == old_moments["step"]
    block = "blocks.0.attn.qkv.weight"
    assert torch.equal(new.student["backbone"].state_dict()[block],
                       old.student["backbone"].state_dict()[block])  # fmt: skip


def test_phases_must_follow_each_other_and_fit_the_patch_grid():
    bad_order = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                            ["phases=[{start_epoch: 3}, {start_epoch: 2}]"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"start_epoch values \[3, 2\] must increase"):
        bad_order.segments()
    odd = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                      ["phases=[{start_epoch: 2, crops: {global_size: 90}}]"])  # fmt: skip
    with pytest.raises(ConfigError, match="global_size 90 and local_size 28 must be multiples"):
        odd.segments()
    with pytest.raises(ConfigError, match=r"phases\[0\]\.crops: unknown key"):
        load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                    ["phases=[{start_epoch: 2, crops: {size: 90}}]"]).segments()  # fmt: skip


def test_time_budget_stops_with_a_checkpoint_and_another_model_cannot_resume(manifest, tmp_path):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                         OVERRIDES + ["log_every=10", "time_budget_s=1e-9"])  # fmt: skip
    metrics = trainer.train(config, [str(manifest)], tmp_path / "run", progress=False)
    assert metrics["iteration"] == 1  # logged although iteration 1 is no multiple of 10
    assert (tmp_path / "run" / "checkpoints" / "step_0000001").is_dir()

    other = load_config(
        TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES + ["model.backbone.depth=2"]
    )
    with pytest.raises(ResumeMismatchError, match=r"model\.backbone\.depth: 0 -> 2"):
        trainer.train(other, [str(manifest)], tmp_path / "run", progress=False)
    claim = json.loads((tmp_path / "run" / "config.json").read_text())
    del claim["model"]["gram"]  # a run written before Gram anchoring existed resumes
    (tmp_path / "run" / "config.json").write_text(json.dumps(claim))
    longer = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    resumed = trainer.train(longer, [str(manifest)], tmp_path / "run", progress=False)
    assert resumed["iteration"] == 3


def test_collapse_warning_names_the_remedies(caplog):
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", ["optim.warmup_epochs=1"])
    schedules = trainer.Schedules.build(config, global_batch=16)
    uniform = {"iteration": schedules.warmup_iters + 1, "dino_target_entropy": 0.995}
    with caplog.at_level("WARNING", logger="training.train"):
        assert not trainer._warn_if_collapsed({**uniform, "iteration": 1}, schedules)  # warmup
        assert not trainer._warn_if_collapsed({**uniform, "dino_target_entropy": 0.7}, schedules)
        assert not caplog.records
        assert trainer._warn_if_collapsed(uniform, schedules)
    assert "near uniform (entropy 0.995" in caplog.text and "teacher.temp" in caplog.text


def test_a_run_that_cannot_read_its_images_fails_and_writes_no_weights(manifest, tmp_path):
    for image in (manifest / "images").iterdir():
        image.unlink()  # the manifest's paths no longer exist here (a moved build)
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    with pytest.raises(trainer.UnreadableDataError, match=r"8 of the 8 images tried could not"):
        trainer.train(config, [str(manifest)], tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "teacher_backbone.pth").exists()


def test_a_manifest_smaller_than_one_batch_is_one_line_naming_the_batch_size(
    manifest, tmp_path, capsys
):
    args = ["--config", "configs/train/tiny_cpu.yaml", "--manifest", str(manifest),
            "--output-dir", str(tmp_path / "run"), "--no-progress", *OVERRIDES,
            "data.batch_size=16"]  # fmt: skip
    assert trainer.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: 8 images cannot fill one batch of data.batch_size=16 on 1 rank(s): "
                       "set data.batch_size to at most 8 or train on more images")  # fmt: skip


def test_a_build_directory_is_refused_naming_its_lvd_manifest(manifest, tmp_path, capsys):
    build = tmp_path / "build"
    (build / "retrieve" / "lvd").mkdir(parents=True)
    (build / "crawl").mkdir()
    shutil.copy(manifest / "00000.parquet", build / "crawl" / "00000.parquet")  # a stage's rows
    args = ["--config", "configs/train/tiny_cpu.yaml", "--manifest", str(build),
            "--output-dir", str(tmp_path / "run"), "--no-progress", *OVERRIDES]  # fmt: skip
    assert trainer.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {build} is a build_lvd directory, not a manifest; its curated set is "
        f"--manifest {build / 'retrieve' / 'lvd'}")  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(manifest, tmp_path, signum):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.train", "--config", "configs/train/tiny_cpu.yaml",
           "--manifest", str(manifest), "--output-dir", str(run), "--no-progress",
           *OVERRIDES, "iters_per_epoch=1000", "--set", "log_every=1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"stopped: {signum.name} at iteration (\d+): checkpoint saved in "
                        rf"{re.escape(str(run / 'checkpoints'))}; rerun the same command to "
                        "resume", line), line  # fmt: skip
    saved = int(re.search(r"iteration (\d+)", line).group(1))
    assert (run / "checkpoints" / f"step_{saved:07d}").is_dir()


def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


@pytest.mark.parametrize("name", ["vits14", "vitb14", "vitl14", "vitg14", "distill_vits14",
                                  "distill_vitb14", "distill_vitl14", "gram_vitl14"])  # fmt: skip
def test_every_recipe_value_is_the_official_one_with_its_source(name):
    import yaml

    table = yaml.safe_load(Path("configs/train/official.yaml").read_text())[name]
    recipe = _flat(yaml.safe_load(Path(f"configs/train/{name}.yaml").read_text()))
    recipe.pop("inherit", None)  # a distillation recipe cites what it lays over vit*14.yaml
    assert sorted(recipe) == sorted(table)  # every key cited, every cited key set
    for key, row in table.items():
        assert recipe[key] == row["value"], (key, row["source"])
        assert row["source"].startswith(("dinov2/", "dinov2 paper", "dinov3/", "ours: ")), key
    config = load_config(TrainConfig, f"configs/train/{name}.yaml")
    assert config.model.backbone.img_size == config.crops.global_size == 224
    if name in ("vitl14", "vitg14"):
        assert config.model.backbone.ffn_layer == "swiglu" and config.model.ibot_bottleneck == 256


def test_the_ffn_layer_and_the_ibot_bottleneck_are_the_recipes():
    from training.layers.mlp import SwiGLUFFN
    from training.models.config import BackboneConfig
    from training.ssl_meta_arch import SSLConfig, SSLMetaArch

    backbone = BackboneConfig(arch="vit_small", depth=1, ffn_layer="swiglu", img_size=56)
    model = SSLMetaArch(SSLConfig(backbone=backbone, head_prototypes=64, ibot_prototypes=32,
                                  head_hidden=32, head_bottleneck=24,
                                  ibot_bottleneck=16))  # fmt: skip
    assert isinstance(model.student["backbone"].blocks[0].mlp, SwiGLUFFN)
    assert model.student["dino_head"].last_layer.weight_v.shape[-1] == 24
    assert model.student["ibot_head"].last_layer.weight_v.shape[-1] == 16


def test_one_gpu_trains_in_bfloat16_autocast_and_the_cpu_in_float32():
    from training.distributed import Dist

    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml")
    assert trainer.compute_dtype(config, Dist(0, 1, torch.device("cpu"))) is None
    assert trainer.compute_dtype(config, Dist(0, 1, torch.device("cuda"))) is torch.bfloat16
    assert trainer.compute_dtype(config, Dist(0, 2, torch.device("cuda"))) is None  # FSDP's
    config.mixed_precision = False
    assert trainer.compute_dtype(config, Dist(0, 1, torch.device("cuda"))) is None


def test_a_step_under_bfloat16_autocast_computes_in_bfloat16_and_keeps_float32_weights():
    from training.models.config import BackboneConfig
    from training.schedules import param_groups
    from training.ssl_meta_arch import SSLConfig, SSLMetaArch

    torch.manual_seed(0)
    backbone = BackboneConfig(depth=1, img_size=56)
    model = SSLMetaArch(SSLConfig(backbone=backbone, head_prototypes=64, ibot_prototypes=32,
                                  head_hidden=32, head_bottleneck=16)).train()  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(model.student, 1))
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml")
    batch = {"global_crops": torch.randn(4, 3, 56, 56), "local_crops": torch.randn(4, 3, 28, 28),
             "masks": torch.rand(4, 16) < 0.3}  # fmt: skip
    seen = []
    qkv = model.student["backbone"].blocks[0].attn.qkv
    hook = qkv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    terms = trainer.train_step(model, optimizer, batch, trainer.Schedules.build(config, 2), 5,
                               3.0, torch.bfloat16)  # fmt: skip
    hook.remove()
    assert torch.bfloat16 in seen and torch.isfinite(terms["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_mix_source_fills_its_share_of_batches_and_bad_ratios_are_refused(
    manifest, tmp_path, capsys
):
    other = tmp_path / "imagenet"
    other.mkdir()
    (other / "a.jpg").write_bytes(encode(make_photo(99, 64, 64)))
    pq.write_table(pa.table({"id": ["in-0"] * 1, "path": ["a.jpg"]}), other / "00000.parquet")
    mix = f"data.mix=[{{manifest: [{other}], ratio: 0.5}}]"
    args = ["--config", "configs/train/tiny_cpu.yaml", "--manifest", str(manifest),
            "--output-dir", str(tmp_path / "run"), "--no-progress", *OVERRIDES]  # fmt: skip
    assert trainer.main([*args, mix]) == 2  # 1 image cannot fill a batch of 4
    assert "1 images cannot fill one batch of data.batch_size=4" in capsys.readouterr().err
    pq.write_table(pa.table({"id": [f"in-{i}" for i in range(4)], "path": ["a.jpg"] * 4}),
                   other / "00000.parquet")  # fmt: skip
    assert trainer.main([*args, mix]) == 0
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", [*OVERRIDES, mix])
    loader = trainer.build_loader(config, [str(manifest)])
    sampler = loader.batch_sampler
    picked = [sampler.source(b)[0] for b in range(400)]
    assert 0.4 <= sum(picked) / 400 <= 0.6
    bad = f"data.mix=[{{manifest: [{other}], ratio: 0.6}}, {{manifest: [{other}], ratio: 0.4}}]"
    assert trainer.main([*args[:-len(OVERRIDES)], "--output-dir", str(tmp_path / "bad"),
                         *OVERRIDES, bad]) == 2  # fmt: skip
    assert "data.mix: ratios sum to 1; they must leave a share" in capsys.readouterr().err


DISTILL = OVERRIDES + ["model.backbone.depth=2", "epochs=1", "iters_per_epoch=2"]


def test_a_student_distills_from_a_frozen_run_and_saves_its_own_ema(manifest, tmp_path):
    teacher_config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES)
    trainer.train(teacher_config, [str(manifest)], tmp_path / "teacher", progress=False)
    teacher_weights = (tmp_path / "teacher" / "teacher_backbone.pth").read_bytes()
    config = load_config(TrainConfig, "configs/train/distill_tiny_cpu.yaml",
                         DISTILL + [f"distillation.teacher={tmp_path / 'teacher'}"])  # fmt: skip
    assert config.model.backbone.drop_path_rate == 0.0 and config.distillation.enabled
    teacher = trainer.distillation_teacher(config, trainer.init_distributed())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert len(teacher["backbone"].blocks) == 12  # the run's, with its heads loaded
    metrics = trainer.train(config, [str(manifest)], tmp_path / "student", progress=False)
    assert metrics["iteration"] == 2 and torch.isfinite(torch.tensor(metrics["ibot_loss"]))
    student = torch.load(tmp_path / "student" / "teacher_backbone.pth")  # the student's EMA
    assert "blocks.1.attn.qkv.weight" in student and "blocks.2.attn.qkv.weight" not in student
    assert (tmp_path / "teacher" / "teacher_backbone.pth").read_bytes() == teacher_weights
    longer = load_config(TrainConfig, "configs/train/distill_tiny_cpu.yaml",
                         DISTILL + [f"distillation.teacher={tmp_path / 'teacher'}",
                                    "iters_per_epoch=3"])  # fmt: skip
    assert trainer.train(longer, [str(manifest)], tmp_path / "student")["iteration"] == 3  # resumes
    wider = load_config(TrainConfig, "configs/train/distill_tiny_cpu.yaml",
                        DISTILL + [f"distillation.teacher={tmp_path / 'teacher'}",
                                   "model.head_prototypes=2048"])  # fmt: skip
    with pytest.raises(ConfigError, match="head_prototypes 1024, the student's 2048"):
        trainer.distillation_teacher(wider, trainer.init_distributed())


def test_a_distillation_teacher_loads_from_official_weights_and_must_match_the_heads(
    tmp_path, caplog
):
    from training.models.vision_transformer import build_vit

    weights = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(build_vit("vit_small", 14, img_size=518).state_dict(), weights)
    config = load_config(TrainConfig, "configs/train/distill_tiny_cpu.yaml",
                         DISTILL + [f"distillation.teacher={weights}",
                                    "distillation.arch=vit_small"])  # fmt: skip
    teacher = trainer.distillation_teacher(config, trainer.init_distributed())
    assert teacher["backbone"].pos_embed.shape == (1, 1 + 37 * 37, 384)
    assert teacher["dino_head"].last_layer.weight_v.shape[0] == config.model.head_prototypes
    assert "without DINO/iBOT heads" in caplog.text
    with pytest.raises(ConfigError, match="distillation.enabled needs distillation.teacher"):
        trainer.distillation_teacher(
            load_config(TrainConfig, "configs/train/distill_tiny_cpu.yaml", DISTILL),
            trainer.init_distributed(),
        )


def test_gram_anchoring_starts_refreshes_and_resumes_on_the_same_loss_curve(
    manifest, tmp_path, monkeypatch
):
    gram = ["model.gram.weight=2.0", "model.gram.start_iteration=2", "model.gram.refresh_every=2",
            "model.gram.max_refreshes=1", "iters_per_epoch=6", "checkpoint_every=3",
            "model.backbone.depth=2"]  # fmt: skip
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", OVERRIDES + gram)
    trainer.train(config, [str(manifest)], tmp_path / "straight", progress=False)
    lines = [
        json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [("gram_loss" in m, m["gram_weight"]) for m in lines] == [(False, 0.0)] * 2 + [
        (True, 2.0)] * 4  # fmt: skip
    refreshed = []
    real_refresh = trainer.SSLMetaArch.refresh_gram_teacher
    monkeypatch.setattr(trainer.SSLMetaArch, "refresh_gram_teacher",
                        lambda self: refreshed.append(1) or real_refresh(self))  # fmt: skip
    real_step = trainer.train_step

    def dies_at_iteration_5(*args, **kwargs):
        if len(steps) == 4:
            raise KeyboardInterrupt("killed")
        steps.append(1)
        return real_step(*args, **kwargs)

    steps: list[int] = []
    monkeypatch.setattr(trainer, "train_step", dies_at_iteration_5)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "train_step", real_step)
    trainer.train(config, [str(manifest)], tmp_path / "resumed", progress=False)
    assert len(refreshed) == 3  # before iterations 2 and 4 (0-based), 4 again after the kill
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "straight"), rel=1e-6)
