"""The DINOv2 objective, each term checked against an independent small computation."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.layers.dino_head import DINOHead
from training.loss import EMACenter, dino_loss, gram_loss, ibot_loss, koleo_loss, sinkhorn_knopp


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_dino_loss_over_all_pairs_but_same_crop():
    rng = np.random.default_rng(0)
    students = [rng.normal(size=(3, 5)) for _ in range(4)]  # 2 global + 2 local crops
    teachers = [rng.dirichlet(np.ones(5), size=3) for _ in range(2)]
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]
    expected = np.mean(
        [-(teachers[t] * _log_softmax(students[s] / 0.1)).sum(-1).mean() for s, t in pairs]
    )
    got = dino_loss([torch.tensor(s) for s in students], [torch.tensor(t) for t in teachers], 0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ibot_loss_weights_each_image_by_its_masked_count():
    rng = np.random.default_rng(1)
    masks = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    m = int(masks.sum())
    s, t = rng.normal(size=(m, 6)), rng.dirichlet(np.ones(6), size=m)
    per_patch = (t * _log_softmax(s / 0.1)).sum(-1)
    owner = np.repeat(np.arange(3), masks.sum(1))
    expected = -sum(per_patch[owner == i].sum() / masks[i].sum() for i in (0, 2)) / 3
    got = ibot_loss(torch.tensor(s), torch.tensor(t), torch.tensor(masks), 0.1)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_koleo_matches_brute_force_nearest_neighbours():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1) + np.diag([np.inf] * 7)
    expected = -np.log(d.min(axis=1) + 1e-8).mean()
    assert koleo_loss(torch.tensor(x)).item() == pytest.approx(expected, rel=1e-5)


def _sinkhorn_reference(logits: np.ndarray, temp: float, iterations: int) -> np.ndarray:
    q = np.exp(logits / temp).T
    k, b = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True) * k
        q /= q.sum(axis=0, keepdims=True) * b
    return (q * b).T


def test_sinkhorn_matches_reference_and_balances_prototypes():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(16, 8)) * 0.5
    got = sinkhorn_knopp(torch.tensor(logits), 0.05, iterations=3).numpy()
    np.testing.assert_allclose(got, _sinkhorn_reference(logits, 0.05, 3), rtol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    many = sinkhorn_knopp(torch.tensor(logits), 0.05, iterations=500).numpy()
    np.testing.assert_allclose(many.sum(axis=0), 16 / 8, rtol=1e-2)  # equal prototype mass


def test_ema_center():
    center = EMACenter(3, momentum=0.9)
    center.update(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    torch.testing.assert_close(center.center, torch.tensor([[0.2, 0.2, 0.2]]))
    probs = center.softmax(torch.zeros(2, 3), 0.07)
    torch.testing.assert_close(probs, torch.full((2, 3), 1 / 3))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_targets(rank: int, world: int, port: int, logits, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        shard = logits.chunk(world)[rank]
        out[rank] = sinkhorn_knopp(shard, 0.05, 3)
        center = EMACenter(logits.shape[1])
        center.update(shard)
        out[world + rank] = center.center
    finally:
        dist.destroy_process_group()


def test_centering_across_two_processes_equals_one_process():
    logits = torch.randn(12, 6, generator=torch.Generator().manual_seed(4))
    out = mp.Manager().dict()
    mp.spawn(_distributed_targets, args=(2, _free_port(), logits, out), nprocs=2, join=True)
    torch.testing.assert_close(torch.cat([out[0], out[1]]), sinkhorn_knopp(logits, 0.05, 3))
    single = EMACenter(6)
    single.update(logits)
    torch.testing.assert_close(out[2], single.center)
    torch.testing.assert_close(out[3], single.center)


def test_dino_head_prototypes_are_unit_norm_and_input_is_normalized():
    head = DINOHead(in_dim=16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    weight = head.last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(32))
    logits = head(torch.randn(5, 16))
    assert logits.shape == (5, 32) and logits.abs().max() <= 1.0 + 1e-5  # cosines


def test_gram_loss_matches_the_formula_image_by_image():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(3, 16, 8, generator=g, requires_grad=True)
    teacher = torch.randn(3, 16, 8, generator=g)
    squared = []  # from the paper's formula: per image, ||X X^T - Y Y^T||_F^2 / N^2
    for b in range(3):
        x = student[b] / student[b].norm(dim=1, keepdim=True)
        y = teacher[b] / teacher[b].norm(dim=1, keepdim=True)
        squared.append(((x @ x.T - y @ y.T) ** 2).sum() / 16**2)
    reference = torch.stack(squared).mean()
    loss = gram_loss(student, teacher)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert gram_loss(teacher * 3.0, teacher) < 1e-6  # scale-free: features are normalized
    clipped = []
    for b in range(3):
        x = torch.nn.functional.normalize(student[b].detach(), dim=1)
        y = torch.nn.functional.normalize(teacher[b], dim=1)
        clipped.append(((x @ x.T).clamp_min(0) - (y @ y.T).clamp_min(0)).pow(2).mean())
    torch.testing.assert_close(gram_loss(student.detach(), teacher, remove_neg=True),
                               torch.stack(clipped).mean())  # fmt: skip
