"""The peer of ``benchmarks/ssl_fashion_mnist.py``: lightly's DINO on the same network (our
6-block ViT-Ti/7 at 28 px), the same crops and batch, for the same wall-clock budget.

It runs in lightly's own environment (lightly imports torchvision, whose PyPI wheels do not
import beside the CPU torch this project pins): ``ssl_fashion_mnist.py --peer lightly
--peer-python VENV/bin/python`` starts it with this repository on PYTHONPATH, then evaluates
the teacher it saves with the same k-NN protocol as ours. It writes a run directory
(``config.json`` + ``teacher_backbone.pth``, as our trainer does) and ``peer.json``.

    python benchmarks/ssl_peer_lightly.py --data ARRAYS.npz --recipe JSON --minutes 15 --out DIR

``--recipe`` is what the two runs share, as ``ssl_fashion_mnist.py`` resolves it (overrides
included), so nothing here is a copy of it: the backbone (our ``model.backbone``), the DINO
head's widths, the crops, the batch and the DataLoader workers.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.dino_transform import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from manifests.config import describe
from training.models.config import BackboneConfig, build_backbone


class _Images(Dataset):
    def __init__(self, images: np.ndarray, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i], "L").convert("RGB"))


class DINO(nn.Module):
    """lightly's DINO example, around our backbone."""

    def __init__(self, backbone: BackboneConfig, head: dict) -> None:
        super().__init__()
        self.student_backbone = build_backbone(backbone)
        dim = self.student_backbone.embed_dim
        self.student_head = DINOProjectionHead(dim, **head, freeze_last_layer=1)
        self.teacher_backbone = build_backbone(replace(backbone, drop_path_rate=0.0))
        self.teacher_backbone.load_state_dict(self.student_backbone.state_dict())
        self.teacher_head = DINOProjectionHead(dim, **head)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x):
        return self.student_head(self.student_backbone(x))

    def forward_teacher(self, x):
        return self.teacher_head(self.teacher_backbone(x))


def train_step(model: DINO, criterion: DINOLoss, optimizer, views, momentum: float):
    """lightly's DINO example step: EMA teacher, DINO loss on every view, Adam."""
    update_momentum(model.student_backbone, model.teacher_backbone, m=momentum)
    update_momentum(model.student_head, model.teacher_head, m=momentum)
    teacher_out = [model.forward_teacher(v) for v in views[:2]]
    student_out = [model.forward(v) for v in views]
    loss = criterion(teacher_out, student_out, epoch=0)
    loss.backward()
    model.student_head.cancel_last_layer_gradients(current_epoch=0)
    optimizer.step()
    optimizer.zero_grad()
    return loss


def main() -> None:
    p = argparse.ArgumentParser(description=describe(__doc__))
    p.add_argument("--data", type=Path, required=True, help="npz with train_images")
    p.add_argument("--recipe", type=json.loads, required=True,
                   help="backbone, head, crops, batch_size, num_workers as JSON")  # fmt: skip
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    images, recipe = np.load(args.data)["train_images"], args.recipe
    batch = recipe["batch_size"]
    transform = DINOTransform(**recipe["crops"])
    loader = DataLoader(_Images(images, transform), batch_size=batch, shuffle=True,
                        num_workers=recipe["num_workers"], drop_last=True,
                        persistent_workers=recipe["num_workers"] > 0)  # fmt: skip
    torch.manual_seed(0)
    backbone = BackboneConfig(**recipe["backbone"])
    model = DINO(backbone, recipe["head"])
    criterion = DINOLoss(output_dim=recipe["head"]["output_dim"], warmup_teacher_temp_epochs=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)  # lightly's example
    budget, steps, seen, gflop_per_step = args.minutes * 60, 0, 0, float("nan")
    # the momentum schedule spans the steps the budget allows, measured from the steady rate
    # of steps 12 to 36 (as ssl_fashion_mnist.py calibrates ours); it starts at 0.996
    total_steps, steady_from = None, 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < budget:
        for views in loader:
            now = time.perf_counter()
            if steps == 12:
                steady_from = now
            elif steps == 36:
                total_steps = steps + int((budget - (now - started)) * 24 / (now - steady_from))
            momentum = 0.996 if total_steps is None else cosine_schedule(
                min(steps, total_steps - 1), total_steps, 0.996, 1)  # fmt: skip
            if steps == 1:  # the work of one step (the first warms up)
                with FlopCounterMode(display=False) as counter:
                    loss = train_step(model, criterion, optimizer, views, momentum)
                gflop_per_step = counter.get_total_flops() / 1e9
            else:
                loss = train_step(model, criterion, optimizer, views, momentum)
            steps, seen = steps + 1, seen + batch
            if time.perf_counter() - started >= budget:
                break
    elapsed = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.teacher_backbone.state_dict(), args.out / "teacher_backbone.pth")
    config = {"model": {"backbone": asdict(backbone)}}
    (args.out / "config.json").write_text(json.dumps(config))
    result = {"steps": steps, "trained_s": round(elapsed, 1),
              "images_per_s": round(seen / elapsed, 2), "epochs": round(seen / len(images), 3),
              "final_loss": round(float(loss.detach()), 5),
              "gflop_per_image": round(gflop_per_step / batch, 3),
              "momentum_schedule_steps": total_steps}  # fmt: skip
    (args.out / "peer.json").write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
