"""The ViT: official parameter layout, packed multi-crop forward, efficient stochastic depth."""

from __future__ import annotations

import pytest
import torch

from training.layers.block import Block, drop_add_residual
from training.layers.mlp import swiglu_hidden
from training.layers.packing import Layout
from training.models import build_vit


def official_layout(dim: int, depth: int, hidden: int, swiglu: bool, grid: int, registers: int):
    """Key -> shape of an official DINOv2 hub checkpoint, written out from its model code."""
    keys = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, grid * grid + 1, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if registers:
        keys["register_tokens"] = (1, registers, dim)
    for i in range(depth):
        b = f"blocks.{i}."
        keys |= {
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "ls1.gamma": (dim,), b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
            b + "ls2.gamma": (dim,),
        }  # fmt: skip
        if swiglu:
            keys |= {
                b + "mlp.w12.weight": (2 * hidden, dim), b + "mlp.w12.bias": (2 * hidden,),
                b + "mlp.w3.weight": (dim, hidden), b + "mlp.w3.bias": (dim,),
            }  # fmt: skip
        else:
            keys |= {
                b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,),
            }  # fmt: skip
    return keys


@pytest.mark.parametrize(
    "arch, dim, depth, hidden, swiglu, registers",
    [
        ("vit_small", 384, 12, 1536, False, 0),
        ("vit_base", 768, 12, 3072, False, 4),
        ("vit_giant2", 1536, 40, 4096, True, 4),
    ],
)
def test_official_checkpoint_layout_loads_strictly(arch, dim, depth, hidden, swiglu, registers):
    with torch.device("meta"):
        model = build_vit(arch, num_register_tokens=registers)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_layout(dim, depth, hidden, swiglu, grid=37, registers=registers)


def test_official_state_dict_loads_with_strict_true():
    layout = official_layout(384, 12, 1536, False, grid=37, registers=0)
    state = {k: torch.randn(shape) for k, shape in layout.items()}
    model = build_vit("vit_small")
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])


def test_swiglu_width_of_vit_g():
    assert swiglu_hidden(4 * 1536) == 4096


def _tiny(**kwargs):
    torch.manual_seed(0)
    model = build_vit("vit_small", img_size=56, **kwargs)
    for p in model.parameters():  # break LayerScale's near-zero init so blocks matter
        p.data.normal_(0, 0.05)
    return model.eval()


def test_packed_multicrop_forward_equals_each_crop_alone():
    model = _tiny(num_register_tokens=2)
    global_crops, local_crops = torch.randn(2, 3, 56, 56), torch.randn(5, 3, 28, 28)
    masks = torch.rand(2, 16) < 0.4
    packed = model.forward_features([global_crops, local_crops], [masks, None])
    alone = [model.forward_features(global_crops, masks), model.forward_features(local_crops)]
    for p, a in zip(packed, alone, strict=True):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
            torch.testing.assert_close(p[key], a[key], atol=2e-5, rtol=1e-4)
    assert packed[0]["x_norm_regtokens"].shape == (2, 2, 384)
    assert packed[1]["x_norm_patchtokens"].shape == (5, 4, 384)


def test_masked_patches_do_not_see_their_pixels():
    model = _tiny()
    x = torch.randn(1, 3, 56, 56)
    y = x.clone()
    y[:, :, :14, :14] += 5.0  # only the first patch differs
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 0] = True
    a, b = model.forward_features(x, mask), model.forward_features(y, mask)
    torch.testing.assert_close(a["x_norm_clstoken"], b["x_norm_clstoken"])
    unmasked_a, unmasked_b = model.forward_features(x), model.forward_features(y)
    assert not torch.allclose(unmasked_a["x_norm_clstoken"], unmasked_b["x_norm_clstoken"])


def test_position_embeddings_interpolate_to_any_grid():
    model = build_vit("vit_small", img_size=518)
    assert model.interpolate_pos_encoding(518, 518) is model.pos_embed
    assert model.interpolate_pos_encoding(224, 224).shape == (1, 16 * 16 + 1, 384)
    assert model.interpolate_pos_encoding(98, 196).shape == (1, 7 * 14 + 1, 384)
    exact = build_vit("vit_small", img_size=56, interpolate_offset=0.0)
    torch.testing.assert_close(
        exact.interpolate_pos_encoding(112, 112)[:, 0], exact.pos_embed[:, 0]
    )


def test_efficient_drop_path_computes_the_branch_only_for_kept_samples():
    seen = []

    def branch(x, layout):
        seen.extend(n for n, _ in layout.shapes)
        return torch.ones_like(x)

    groups = [torch.zeros(10, 3, 2), torch.zeros(20, 5, 2)]
    layout = Layout.of(groups)
    out = layout.unpack(drop_add_residual(layout.pack(groups), layout, branch, rate=0.4))
    assert seen == [6, 12]  # the branch ran on 60% of each group
    for o, n in zip(out, (10, 20), strict=True):
        changed = (o != 0).flatten(1).any(1)
        assert changed.sum() == int(n * 0.6)
        torch.testing.assert_close(o[changed], torch.full_like(o[changed], n / int(n * 0.6)))


def test_efficient_drop_path_gradients_reach_only_the_kept_rows():
    """d out / d x is 1 + scale * w on the kept rows and 1 elsewhere; d out / d w sums
    scale * x over the kept rows only."""
    w = torch.tensor(3.0, requires_grad=True)
    groups = [torch.randn(10, 3, 2), torch.randn(20, 5, 2)]
    layout = Layout.of(groups)
    x = layout.pack(groups).requires_grad_()
    out = drop_add_residual(x, layout, lambda t, _: t * w, rate=0.4)
    out.sum().backward()
    kept = out.detach() != x.detach()  # the rows the branch changed
    scales = torch.cat([torch.full((n * k, 2), n / int(n * 0.6)) for n, k in layout.shapes])
    torch.testing.assert_close(x.grad, torch.where(kept, 1 + 3.0 * scales, torch.ones_like(x)))
    torch.testing.assert_close(w.grad, (scales * x.detach())[kept].sum())


def test_vit_s_trains_with_drop_path_on_mixed_crops():
    """The official code crashes here (ViT-S, drop path, fused path); ours must not."""
    model = build_vit("vit_small", img_size=56, drop_path_rate=0.4).train()
    out = model.forward_features([torch.randn(4, 3, 56, 56), torch.randn(8, 3, 28, 28)])
    loss = sum(o["x_norm_clstoken"].square().mean() for o in out)
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert torch.isfinite(model.blocks[-1].mlp.fc2.weight.grad).all()


def test_both_drop_paths_are_unbiased():
    """Averaged over many draws, a block with drop path gives the block without it."""
    torch.manual_seed(0)
    block = Block(dim=32, num_heads=2, drop_path=0.3, init_values=1.0)
    groups = [torch.randn(16, 5, 32), torch.randn(24, 3, 32)]
    layout = Layout.of(groups)
    x = layout.pack(groups)
    with torch.no_grad():
        expected = block.eval()(x, layout)
        block.train()
        for efficient in (True, False):
            block.efficient_drop_path = efficient
            mean = torch.stack([block(x, layout) for _ in range(400)]).mean(0)
            for got, want, inp in zip(
                layout.unpack(mean), layout.unpack(expected), groups, strict=True
            ):
                error = (got - want).abs().mean() / (want - inp).abs().mean()
                assert error < 0.1, (efficient, float(error))


@pytest.mark.parametrize("registers", [0, 4])
def test_every_published_layout_loads_with_its_interpolation(tmp_path, registers):
    from training.models.loading import load_backbone

    torch.manual_seed(0)
    official = build_vit("vit_small", num_register_tokens=registers, depth=2)
    state = official.state_dict()
    assert state["pos_embed"].shape[1] == 37 * 37 + 1  # trained at 518
    assert ("register_tokens" in state) == bool(registers)
    torch.save(state, tmp_path / "dinov2_vits14.pth")
    with pytest.raises(RuntimeError, match="Missing key"):  # depth comes from the architecture
        load_backbone(tmp_path / "dinov2_vits14.pth", "vit_small", 14)
    full = build_vit("vit_small", num_register_tokens=registers).state_dict()
    torch.save(full, tmp_path / "full.pth")
    model = load_backbone(tmp_path / "full.pth", "vit_small", 14)
    assert model.num_register_tokens == registers
    assert (model.interpolate_antialias, model.interpolate_offset) == (
        (True, 0.0) if registers else (False, 0.1)
    )
    for key, value in full.items():
        assert torch.equal(model.state_dict()[key], value), key
