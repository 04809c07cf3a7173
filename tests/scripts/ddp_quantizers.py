"""A few SGD steps of conv -> quantizer -> conv per quantizer kind, on one fixed batch of 8 split over the ranks.

Run alone (the whole batch) or under ``torchrun --nproc_per_node 2`` (half a batch each, DistributedDataParallel);
rank 0 writes every kind's final parameters and buffers to ``OUT/<kind>.safetensors``. The test compares the two:
statistics and entropy terms taken over all ranks make them agree.

Usage: python ddp_quantizers.py OUT
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tamer.nn.quantize import QuantizerConfig, build_quantizer

# Kinds whose training is deterministic given the batch (Gumbel noise, k-means starts and dead-code restarts draw
# on each rank's own random numbers and latents, so they are left out).
KINDS = {
    "vq": dict(num_codes=32, embed_dim=6),
    "vq-ema": dict(num_codes=32, embed_dim=6, ema=True, ema_decay=0.8),
    "vq-rotation": dict(num_codes=32, embed_dim=6, rotation_trick=True),
    "fsq": dict(kind="fsq", levels=[5, 4, 3], embed_dim=3),
    "lfq": dict(kind="lfq", embed_dim=6),
    "bsq": dict(kind="lfq", embed_dim=6, spherical=True),
    "simvq": dict(kind="simvq", num_codes=32, embed_dim=6, rotation_trick=True),
    "residual-ema": dict(kind="residual", num_codes=16, embed_dim=6, depth=3, ema=True, ema_decay=0.8),
    "residual-shared": dict(kind="residual", num_codes=16, embed_dim=6, depth=2, shared_codebook=True),
}


class Toy(nn.Module):
    def __init__(self, options: dict):
        super().__init__()
        config = QuantizerConfig(**options)
        self.encode = nn.Conv2d(4, config.embed_dim, 1)
        self.quantize = build_quantizer(config)
        if hasattr(self.quantize, "embedding"):
            with torch.no_grad():
                self.quantize.embedding.weight.normal_()
        self.decode = nn.Conv2d(config.embed_dim, 4, 1)

    def forward(self, x):
        out = self.quantize(self.encode(x))
        return F.mse_loss(self.decode(out.latents), x) + out.loss


def main(out: Path) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    batch = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    part = batch.chunk(world)[rank]
    for name, options in KINDS.items():
        torch.manual_seed(0)
        model = Toy(options).train()
        step = DistributedDataParallel(model) if world > 1 else model
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
        for _ in range(4):
            optimizer.zero_grad()
            step(part).backward()
            optimizer.step()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
