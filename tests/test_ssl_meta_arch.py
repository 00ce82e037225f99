"""The student/teacher objective on one batch: packing changes nothing, the EMA is exact."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from training.models.config import BackboneConfig
from training.ssl_meta_arch import SSLConfig, SSLMetaArch, relative_entropy


def _model(**kwargs) -> SSLMetaArch:
    """A small SSLMetaArch; backbone settings among ``kwargs`` go to its BackboneConfig."""
    torch.manual_seed(0)
    names = {f.name for f in fields(BackboneConfig)}
    backbone = BackboneConfig(img_size=56, **{k: v for k, v in kwargs.items() if k in names})
    config = SSLConfig(backbone=backbone, head_prototypes=128, ibot_prototypes=96,
                       head_hidden=48, head_bottleneck=16,
                       **{k: v for k, v in kwargs.items() if k not in names})  # fmt: skip
    return SSLMetaArch(config)


def _batch(b: int = 4, n_local: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(2 * b, 16, generator=g) < 0.3
    masks[0, :3] = True  # at least one masked patch
    return {
        "global_crops": torch.randn(2 * b, 3, 56, 56, generator=g),
        "local_crops": torch.randn(n_local * b, 3, 28, 28, generator=g),
        "masks": masks,
    }


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "ema"])
@pytest.mark.parametrize("separate", [True, False])
def test_packed_and_per_size_forward_give_the_same_losses(centering, separate):
    batch = _batch()
    losses = [
        _model(packed=packed, centering=centering, ibot_separate_head=separate).eval()(
            batch, teacher_temp=0.04
        )
        for packed in (True, False)
    ]
    for key in ("dino_loss", "ibot_loss", "koleo_loss", "loss"):
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=1e-5, atol=1e-5)


def test_loss_is_the_weighted_sum_and_gradients_reach_student_only():
    model = _model(drop_path_rate=0.2).train()
    terms = model(_batch(), teacher_temp=0.04)
    expected = terms["dino_loss"] + terms["ibot_loss"] + 0.1 * terms["koleo_loss"]
    torch.testing.assert_close(terms["loss"], expected)
    terms["loss"].backward()
    assert model.student["backbone"].blocks[0].attn.qkv.weight.grad is not None
    assert model.student["ibot_head"].mlp[0].weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())


def test_teacher_update_is_an_exponential_moving_average():
    model = _model()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    student = [p.clone() for p in model.student.parameters()]
    model.update_teacher(0.9)
    for t, b, s in zip(model.teacher.parameters(), before, student, strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_relative_entropy_of_teacher_targets():
    k = 64
    assert float(relative_entropy(torch.full((3, k), 1.0 / k))) == pytest.approx(1.0)
    assert float(relative_entropy(torch.eye(k)[:5])) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(2, k)
    half[:, : k // 2] = 2.0 / k  # uniform over half the prototypes: log(K/2) / log(K)
    assert float(relative_entropy(half)) == pytest.approx(5 / 6)


def test_the_teacher_is_deterministic_while_the_student_trains_with_drop_path():
    model = _model(drop_path_rate=0.4, depth=4, layerscale=1.0).train()
    assert model.student.training and not model.teacher.training
    batch = _batch()
    first = model.teacher_targets(batch["global_crops"], batch["masks"], 0.04)
    second = model.teacher_targets(batch["global_crops"], batch["masks"], 0.04)
    for a, b in zip([*first[0], first[1]], [*second[0], second[1]], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    student = model.student["backbone"]
    outputs = [student.forward_features(batch["global_crops"])["x_norm_clstoken"]
               for _ in range(2)]  # fmt: skip
    assert not torch.equal(*outputs)  # stochastic depth is on for the student
    for t, s in zip(model.teacher.parameters(), model.student.parameters(), strict=True):
        assert torch.equal(t, s)  # the teacher starts from the student's weights


def test_each_part_is_clipped_on_its_own():
    from training.train import clip_gradients

    model = _model()
    for name, part in model.student.items():
        for p in part.parameters():
            p.grad = torch.full_like(p, 30.0 if name == "dino_head" else 1e-4)
    backbone = [p.grad.clone() for p in model.student["backbone"].parameters()]
    norms = clip_gradients(model, 3.0)
    assert set(norms) == {"backbone", "dino_head", "ibot_head"} and norms["dino_head"] > 3
    for before, p in zip(backbone, model.student["backbone"].parameters(), strict=True):
        assert torch.equal(before, p.grad)  # under its own limit: untouched
    clipped = torch.stack([p.grad.norm() for p in model.student["dino_head"].parameters()])
    assert float(clipped.norm()) == pytest.approx(3.0, rel=1e-4)


def test_every_tensor_follows_a_move_of_the_model_as_a_device_move_would():
    from manifests.config import load_config
    from training.checkpoint import _state
    from training.config import TrainConfig
    from training.schedules import param_groups
    from training.train import Schedules, train_step

    model = _model(centering="ema", num_register_tokens=2).to(torch.float64).train()
    optimizer = torch.optim.AdamW(param_groups(model.student, 12))
    config = load_config(TrainConfig, "configs/train/tiny_cpu.yaml")
    batch = {k: v.double() if v.is_floating_point() else v for k, v in _batch().items()}
    train_step(model, optimizer, batch, Schedules.build(config, 4), 5, 3.0)
    state = _state(model, optimizer, 1)
    tensors = {"model": state["model"], "dino_center": state["dino_center"],
               "ibot_center": state["ibot_center"],
               "optimizer": {f"{k}.{n}": v for k, s in optimizer.state.items()
                             for n, v in s.items() if n != "step"}}  # fmt: skip
    flat = {}
    for group, values in tensors.items():
        items = values.items() if isinstance(values, dict) else [("", values)]
        flat |= {f"{group}.{k}": v for k, v in items if torch.is_tensor(v)}
    assert len(flat) > 100
    stayed = sorted(
        k for k, v in flat.items() if v.is_floating_point() and v.dtype != torch.float64
    )
    assert stayed == []
    assert not torch.equal(model.dino_center.center, torch.zeros_like(model.dino_center.center))


def test_distillation_takes_targets_from_the_frozen_teacher_unmasked_over_every_patch():
    from training.loss import ibot_loss, sinkhorn_knopp
    from training.ssl_meta_arch import build_networks

    model = _model(depth=1).eval()
    torch.manual_seed(5)
    teacher = build_networks(_model(depth=3).config).eval()  # another, deeper network
    batch = _batch()
    terms = model(batch, 0.04, distill_from=teacher)

    with torch.no_grad():  # the EMA teacher and the mask token play no part
        model.teacher["backbone"].blocks[0].attn.qkv.weight.add_(1.0)
        model.student["backbone"].mask_token.add_(5.0)
    again = model(batch, 0.04, distill_from=teacher)
    for key in ("dino_loss", "ibot_loss", "loss"):
        torch.testing.assert_close(again[key], terms[key])

    every = torch.ones_like(batch["masks"])  # iBOT from the paper's formula, every patch
    with torch.no_grad():
        out = teacher["backbone"].forward_features(batch["global_crops"])
        targets = sinkhorn_knopp(teacher["ibot_head"](out["x_norm_patchtokens"][every]), 0.04)
    student = model.student["backbone"].forward_features(batch["global_crops"])
    logits = model.student["ibot_head"](student["x_norm_patchtokens"][every])
    torch.testing.assert_close(terms["ibot_loss"], ibot_loss(logits, targets, every, 0.1))
    assert terms["ibot_loss"] != model(batch, 0.04)["ibot_loss"]  # not the self-distillation


def test_gram_anchoring_compares_to_the_gram_teacher_at_its_scale_on_the_student_grid():
    import torch.nn.functional as F

    from training.loss import gram_loss
    from training.ssl_meta_arch import GramConfig, resize_patch_grid

    model = _model(depth=1, gram=GramConfig(weight=2.0)).eval()
    unmasked = {**_batch(), "masks": torch.zeros(8, 16, dtype=torch.bool)}
    terms = model(unmasked, 0.04, gram_weight=2.0)
    assert terms["gram_loss"] < 1e-10  # at init the Gram teacher is the student
    torch.testing.assert_close(terms["loss"] - 2.0 * terms["gram_loss"],
                               model(unmasked, 0.04)["loss"])  # fmt: skip

    high = _model(depth=1, gram=GramConfig(weight=2.0, teacher_scale=2.0)).eval()
    batch = _batch()
    terms = high(batch, 0.04, gram_weight=1.0)
    with torch.no_grad():
        big = F.interpolate(batch["global_crops"], size=(112, 112), mode="bicubic")
        teacher = high.gram_teacher["backbone"].forward_features(big)["x_norm_patchtokens"]
        assert teacher.shape[1] == 64
        target = resize_patch_grid(teacher, 4)
    student = high.student["backbone"].forward_features(batch["global_crops"], batch["masks"])
    torch.testing.assert_close(terms["gram_loss"],
                               gram_loss(student["x_norm_patchtokens"], target))  # fmt: skip
    assert not any(p.requires_grad for p in high.gram_teacher.parameters())
