"""The student/teacher objective on one batch: packing changes nothing, the EMA is exact."""

from __future__ import annotations

import pytest
import torch

from training.ssl_meta_arch import SSLConfig, SSLMetaArch, relative_entropy


def _model(**kwargs) -> SSLMetaArch:
    torch.manual_seed(0)
    config = SSLConfig(img_size=56, head_prototypes=128, ibot_prototypes=96, head_hidden=48,
                       head_bottleneck=16, **kwargs)  # fmt: skip
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
