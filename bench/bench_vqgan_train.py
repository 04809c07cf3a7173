"""Seconds per VQGAN training step, tamer against the original CompVis modules, same weights, same process.

    .venv/bin/python bench/bench_vqgan_train.py [--size 256] [--batch 4] [--repeats 3] [--device cpu]

A step: forward through encoder, quantizer and decoder; L1 + codebook loss + the hinge generator term weighted by
the adaptive weight (gradients of both terms on the decoder's last layer); backward; Adam step. LPIPS is left out
of both sides (its VGG16 weights are not on this machine; it costs the same in both). The discriminator's own step
is included too. Prints a markdown table with the machine and the ratio to the original.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import types

import torch

from bench_vqgan import interleaved_medians, machine, original_modules
from tamer.devices import autocast, resolve_precision
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.loss import VQGANLoss, VQGANLossConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


def training_step(model: VQGAN, loss: VQGANLoss, images: torch.Tensor, precision: str = "fp32"):
    """One generator and one discriminator update of tamer, as the trainer's VQGAN task does them: forward passes
    under ``precision``'s autocast, backward passes outside it."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6, betas=(0.5, 0.9))
    disc_optimizer = torch.optim.Adam(loss.discriminator.parameters(), lr=1e-6, betas=(0.5, 0.9))
    chosen = resolve_precision(precision, images.device)

    def step():
        with autocast(images.device, chosen):
            out = model(images)
            total, _ = loss.generator_loss(images, out.reconstruction, out.quantizer_loss, model.last_layer, step=1)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        with autocast(images.device, chosen):
            d_loss, _ = loss.discriminator_loss(images, out.reconstruction, step=1)
        disc_optimizer.zero_grad()
        d_loss.backward()
        disc_optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="also time tamer's step under bf16 autocast (forward "
                        "passes; what train.precision auto picks where bf16 is fast)")
    args = parser.parse_args()
    device = torch.device(args.device)

    from taming.modules.discriminator.model import NLayerDiscriminator

    # The original's loss package imports `requests` for a download helper this benchmark never calls.
    sys.modules.setdefault("requests", types.ModuleType("requests"))
    from taming.modules.losses.vqperceptual import hinge_d_loss as original_hinge

    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(quantizer=QuantizerConfig(num_codes=1024, embed_dim=256, legacy_loss=True))).to(device)
    loss = VQGANLoss(VQGANLossConfig(disc_start=0, perceptual_weight=0.0, disc_weight=0.8)).to(device)
    encoder, decoder, quantizer = (m.to(device).train() for m in original_modules(model))
    with contextlib.redirect_stdout(io.StringIO()):
        original_disc = NLayerDiscriminator(input_nc=3, n_layers=3).to(device)
    original_disc.load_state_dict(loss.discriminator.state_dict())
    quant_conv, post_quant_conv = (torch.nn.Conv2d(256, 256, 1).to(device) for _ in range(2))
    quant_conv.load_state_dict(model.quant_conv.state_dict())
    post_quant_conv.load_state_dict(model.post_quant_conv.state_dict())
    images = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1

    original_params = [*encoder.parameters(), *decoder.parameters(), *quantizer.parameters(),
                       *quant_conv.parameters(), *post_quant_conv.parameters()]
    original_opt = torch.optim.Adam(original_params, lr=1e-6, betas=(0.5, 0.9))
    original_disc_opt = torch.optim.Adam(original_disc.parameters(), lr=1e-6, betas=(0.5, 0.9))

    def original_step():
        z_q, q_loss, _ = quantizer(quant_conv(encoder(images)))
        reconstruction = decoder(post_quant_conv(z_q))
        nll = (images - reconstruction).abs().mean()
        g_loss = -original_disc(reconstruction).mean()
        nll_grad = torch.autograd.grad(nll, decoder.conv_out.weight, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, decoder.conv_out.weight, retain_graph=True)[0]
        weight = (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4).detach() * 0.8
        total = nll + weight * g_loss + q_loss
        original_opt.zero_grad()
        total.backward()
        original_opt.step()
        d_loss = original_hinge(original_disc(images), original_disc(reconstruction.detach()))
        original_disc_opt.zero_grad()
        d_loss.backward()
        original_disc_opt.step()

    model.train()
    cl_model = VQGAN(model.config).to(device).train()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)
    cl_loss = VQGANLoss(loss.config).to(device).to(memory_format=torch.channels_last)
    cl_loss.discriminator.load_state_dict(loss.discriminator.state_dict())
    tamer_step = training_step(model, loss, images)
    cl_step = training_step(cl_model, cl_loss, images)

    steps = [("original (CompVis modules)", "fp32", original_step), ("tamer (default layout)", "fp32", tamer_step),
             ("tamer, channels-last weights", "fp32", cl_step)]
    if args.bf16:
        bf16_model = VQGAN(model.config).to(device).train()
        bf16_model.load_state_dict(model.state_dict())
        bf16_loss = VQGANLoss(loss.config).to(device)
        bf16_loss.discriminator.load_state_dict(loss.discriminator.state_dict())
        steps.append(("tamer (default layout)", "bf16 autocast", training_step(bf16_model, bf16_loss, images, "bf16")))
    times = interleaved_medians([fn for _, _, fn in steps], args.repeats, device)
    rows = [(name, precision, seconds) for (name, precision, _), seconds in zip(steps, times)]

    print(f"\nVQGAN f16 training step (generator + discriminator, no LPIPS), {args.size}×{args.size}, batch "
          f"{args.batch}, median of {args.repeats} interleaved rounds; torch {torch.__version__}; {machine()}\n")
    print("| implementation | precision | s/step | × original |")
    print("|---|---|---|---|")
    for name, precision, seconds in rows:
        print(f"| {name} | {precision} | {seconds:.2f} | {rows[0][2] / seconds:.2f} |")


if __name__ == "__main__":
    main()
