"""Training steps per second of the demo's tiny VQGAN: the recipe as shipped before (the original's GroupNorm(32))
and now (no normalisation, ``autoencoder.norm_groups: 0``), in the default layout and channels-last (what the
trainer's ``memory_format: auto`` picks on a CPU), beside the original CompVis modules of the same size.

    .venv/bin/python bench/bench_tiny_training.py [--batch 16] [--repeats 20]

A step: encoder, quantizer, decoder; L1 + codebook loss; backward; Adam step (the demo's VQGAN trains without its
GAN term). 32×32 images, f4, 256 codes. Prints a markdown table with the machine and the ratio to the original.
"""

from __future__ import annotations

import argparse
import contextlib
import io

import torch

from bench_vqgan import interleaved_medians, machine
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


def tiny_config(norm_groups: int) -> VQGANConfig:
    return VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                         z_channels=64, resolution=32, norm_groups=norm_groups),
                       QuantizerConfig(num_codes=256, embed_dim=16, l2_normalize=True))


def tamer_step(model: VQGAN, images: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step():
        out = model(images)
        loss = (images - out.reconstruction).abs().mean() + out.quantizer_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def original_step(images: torch.Tensor):
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    ddconfig = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, in_channels=3,
                    out_ch=3, resolution=32, z_channels=64, double_z=False)
    with contextlib.redirect_stdout(io.StringIO()):
        encoder, decoder = Encoder(**ddconfig), Decoder(**ddconfig)
    quantizer = VectorQuantizer2(256, 16, beta=0.25)
    quant_conv, post_quant_conv = torch.nn.Conv2d(64, 16, 1), torch.nn.Conv2d(16, 64, 1)
    modules = (encoder, decoder, quantizer, quant_conv, post_quant_conv)
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-6)

    def step():
        z_q, q_loss, _ = quantizer(quant_conv(encoder(images)))
        loss = (images - decoder(post_quant_conv(z_q))).abs().mean() + q_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 32, 32) * 2 - 1
    steps = [original_step(images), tamer_step(VQGAN(tiny_config(32)).train(), images),
             tamer_step(VQGAN(tiny_config(0)).train(), images),
             tamer_step(VQGAN(tiny_config(0)).train().to(memory_format=torch.channels_last), images)]
    times = interleaved_medians(steps, args.repeats, torch.device("cpu"))
    names = ["original (CompVis modules, GroupNorm 32)", "tamer, before (norm_groups 32)",
             "tamer, demo recipe (norm_groups 0)", "tamer, demo recipe, channels-last weights"]
    print(f"\nTiny VQGAN training step (32×32, f4, 256 codes, L1 + codebook, Adam), batch {args.batch}, "
          f"median of {args.repeats} interleaved rounds; torch {torch.__version__};"
          f" {machine()}\n")
    print("| implementation | s/step | steps/s | × original |")
    print("|---|---|---|---|")
    for name, seconds in zip(names, times):
        print(f"| {name} | {seconds:.3f} | {1 / seconds:.2f} | {times[0] / seconds:.2f} |")


if __name__ == "__main__":
    main()
