"""Our backbone in transformers and timm, and back: the same images give the same CLS and
patch tokens in every library (fp32), loaded the way those libraries' users load them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from curation.embed import load_embedder
from manifests.config import ConfigError, load_config
from tests.test_knn import _labelled_manifest
from training import train as trainer
from training.config import TrainConfig
from training.distillation import DistillationConfig, load_teacher
from training.distributed import init_distributed
from training.eval import knn
from training.export import at_image_size, export
from training.models.loading import load_backbone
from training.models.vision_transformer import VisionTransformer, build_vit

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-5


def _random_vit(arch: str, registers: int, seed: int = 0) -> VisionTransformer:
    """A ViT with every weight random, layer scales and positions included (at their init,
    1e-5 and 0.02, they would hide a misplaced block or grid)."""
    torch.manual_seed(seed)
    reg = {"num_register_tokens": registers, "interpolate_antialias": True,
           "interpolate_offset": 0.0} if registers else {}  # fmt: skip
    model = build_vit(arch, 14, img_size=224, **reg).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ls1.gamma.uniform_(0.5, 1.5)
            block.ls2.gamma.uniform_(0.5, 1.5)
        model.pos_embed.normal_(0, 0.5)
        model.cls_token.normal_(0, 1)
        if registers:
            model.register_tokens.normal_(0, 1)
    return model


def _ours(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model.forward_features(x)
    return out["x_norm_clstoken"], out["x_norm_patchtokens"]


def _assert_same(ours, cls, patches, what: str) -> None:
    assert (ours[0] - cls).abs().max() < TOLERANCE, f"{what}: CLS tokens differ"
    assert (ours[1] - patches).abs().max() < TOLERANCE, f"{what}: patch tokens differ"


def _transformers_tokens(directory: Path, x: torch.Tensor, registers: int):
    model = transformers.AutoModel.from_pretrained(directory).eval()
    expected = "Dinov2WithRegistersModel" if registers else "Dinov2Model"
    assert type(model).__name__ == expected
    with torch.no_grad():
        hidden = model(pixel_values=x).last_hidden_state
    return hidden[:, 0], hidden[:, 1 + registers :]


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("arch", ["vit_small", "vit_base"])
def test_transformers_gives_our_tokens_and_loads_back(arch, registers, tmp_path):
    model = _random_vit(arch, registers)
    x224, x168 = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 168, 182)
    export(model, "transformers", tmp_path / "hf")
    _assert_same(_ours(model, x224), *_transformers_tokens(tmp_path / "hf", x224, registers),
                 f"{arch} at 224")  # fmt: skip
    if registers:  # the _reg models resample as transformers does: any size agrees
        _assert_same(_ours(model, x168), *_transformers_tokens(tmp_path / "hf", x168, registers),
                     f"{arch} at 168x182")  # fmt: skip
    x168 = x168[..., :168]  # the others: exported with their grid at the size they run at
    export(at_image_size(model, 168), "transformers", tmp_path / "hf168")
    _assert_same(_ours(model, x168), *_transformers_tokens(tmp_path / "hf168", x168, registers),
                 f"{arch} exported at 168")  # fmt: skip
    # and back: a transformers directory loads as our ViT with transformers' resampling
    back = load_backbone(tmp_path / "hf", None, 14)
    for x in (x224, torch.randn(1, 3, 154, 196)):
        _assert_same(_ours(back, x), *_transformers_tokens(tmp_path / "hf", x, registers),
                     f"{arch} loaded back at {tuple(x.shape[2:])}")  # fmt: skip


def test_transformers_directories_in_either_naming_load_back(tmp_path):
    """A directory saved by transformers itself, or a state dict under the names its modules
    have (5.x: q_proj, gate_proj ...), with SwiGLU (giant's FFN), loads back as the same
    model."""
    torch.manual_seed(0)
    model = build_vit("vit_giant2", 14, depth=2, img_size=56).eval()
    export(model, "transformers", tmp_path / "ours")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "ours")
    hf.save_pretrained(tmp_path / "saved")
    (tmp_path / "module_names").mkdir()  # the state dict of the module as transformers names it
    shutil.copy(tmp_path / "ours" / "config.json", tmp_path / "module_names")
    save_file(hf.state_dict(), tmp_path / "module_names" / "model.safetensors")
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        hidden = hf(pixel_values=x).last_hidden_state
    for directory in ("ours", "saved", "module_names"):
        back = load_backbone(tmp_path / directory, None, 14)
        _assert_same(_ours(back, x), hidden[:, 0], hidden[:, 1:], directory)
    _assert_same(_ours(model, x), hidden[:, 0], hidden[:, 1:], "SwiGLU export")


@pytest.mark.parametrize("registers", [0, 4])
def test_timm_gives_our_tokens_at_the_exported_size(registers, tmp_path):
    timm = pytest.importorskip("timm")
    model = _random_vit("vit_small", registers, seed=1)
    for size in (224, 168):
        out = tmp_path / f"timm{size}"
        export(at_image_size(model, size), "timm", out)
        config = json.loads((out / "config.json").read_text())
        name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
        assert config["architecture"] == name
        loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            tokens = loaded.forward_features(x)
        _assert_same(_ours(model, x), tokens[:, 0], tokens[:, 1 + registers :], f"timm at {size}")
        # the form: the architecture by name, the file as the overlay
        by_name = timm.create_model(
            name,
            pretrained=True,
            img_size=size,
            pretrained_cfg_overlay={"file": str(out / "model.safetensors")},
        )
        with torch.no_grad():
            assert torch.equal(by_name.eval().forward_features(x), tokens)


def test_export_cli_from_a_weights_file_and_its_errors(tmp_path):
    model = _random_vit("vit_small", 0)
    torch.save(model.state_dict(), tmp_path / "dinov2_vits14.pth")
    weights, out = str(tmp_path / "dinov2_vits14.pth"), str(tmp_path / "out")
    cli = [sys.executable, "-m", "training.export", "--run", weights, "--arch", "vit_small",
           "--format", "transformers", "--out", out]  # fmt: skip
    done = subprocess.run([*cli, "--image-size", "98"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["image_size"] == 98
    assert json.loads((tmp_path / "out" / "config.json").read_text())["image_size"] == 98
    assert not (tmp_path / "out.partial").exists()
    bad = subprocess.run([*cli, "--image-size", "100"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a multiple of the patch size 14" in bad.stderr
    missing = subprocess.run([*cli[:4], str(tmp_path / "nope"), *cli[5:]],
                             capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_training_starts_from_a_transformers_directory(tmp_path):
    model = _random_vit("vit_small", 4)
    export(model, "transformers", tmp_path / "hf")
    overrides = ["model.backbone.arch=vit_small", "model.backbone.num_register_tokens=4",
                 f"init={tmp_path / 'hf'}"]  # fmt: skip
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", overrides)
    ssl, _ = trainer.build_model(config, init_distributed(), initial=True)
    x = torch.randn(2, 3, 56, 56)  # the recipe's grid is for 56 px: resampled from 224
    for network in (ssl.student, ssl.teacher):
        _assert_same(_ours(network["backbone"].eval(), x), *_ours(model, x), "init")
    fresh, _ = trainer.build_model(config, init_distributed(), initial=False)  # a resume
    assert not torch.equal(fresh.student["backbone"].cls_token, ssl.student["backbone"].cls_token)
    mismatch = load_config(TrainConfig, "configs/train/tiny_cpu.yaml",
                           [f"init={tmp_path / 'hf'}"])  # fmt: skip
    with pytest.raises(ConfigError, match="init: the weights do not fit model.backbone"):
        trainer.build_model(mismatch, init_distributed(), initial=True)


def test_a_transformers_directory_is_a_distillation_teacher(tmp_path, caplog):
    model = _random_vit("vit_small", 0)
    export(model, "transformers", tmp_path / "hf")
    student = load_config(TrainConfig, "configs/train/tiny_cpu.yaml", []).model
    teacher = load_teacher(DistillationConfig(True, str(tmp_path / "hf")), student, "cpu")
    assert "random and frozen" in caplog.text
    x = torch.randn(2, 3, 224, 224)  # the exported grid's size (elsewhere: transformers' rule)
    _assert_same(_ours(teacher["backbone"], x), *_ours(model, x), "teacher backbone")
    assert teacher["dino_head"].mlp[0].in_features == model.embed_dim
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_embedder_reads_a_transformers_directory_at_its_crop_size(tmp_path):
    model = _random_vit("vit_small", 4)
    export(at_image_size(model, 112), "transformers", tmp_path / "hf")
    embedder = load_embedder(f"vit:{tmp_path / 'hf'}")
    image = torch.rand(3, 150, 200)
    batch = embedder.transform(image)[None]
    assert batch.shape == (1, 3, 112, 112) and embedder.dim == 384
    with torch.no_grad():
        hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
        expected = hf(pixel_values=batch).pooler_output  # the final-norm CLS token
        assert (embedder.model(batch) - expected).abs().max() < TOLERANCE


def test_knn_on_a_transformers_directory_leaves_it_as_it_was(tmp_path, capsys):
    """A transformers directory is not a run: the k-NN reports, and writes no run report or
    k-NN record into it."""
    export(_random_vit("vit_small", 0), "transformers", tmp_path / "hf")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    train = _labelled_manifest(tmp_path, "train", 12, 0)
    val = _labelled_manifest(tmp_path, "val", 4, 1)
    code = knn.main(["--checkpoint", str(tmp_path / "hf"), "--train-manifest", train,
                     "--val-manifest", val, "--image-size", "56", "--workers", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before


def test_a_directory_transformers_cannot_describe_is_refused_naming_it(tmp_path):
    export(_random_vit("vit_small", 0), "transformers", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "model_type": "vit"}))
    with pytest.raises(ConfigError, match="model_type 'vit'; expected dinov2"):
        load_backbone(tmp_path / "hf", None, 14)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    state = load_file(tmp_path / "hf" / "model.safetensors")
    del state["encoder.layer.3.attention.attention.key.weight"]
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ConfigError, match=r"1 weights missing .*layer\.3\.attention"):
        load_backbone(tmp_path / "hf", None, 14)
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_backbone(tmp_path / "hf", None, 14)
