"""Encode and decode throughput of tamer's VQGAN against the original CompVis modules, same weights, same process.

    .venv/bin/python bench/bench_vqgan.py [--size 256] [--batch 4] [--repeats 5] [--device cpu]

Prints a markdown table (machine, configuration, median seconds per batch, images/s, ratio to the original)
and the largest differences between the two implementations' outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import time

import torch

from tamer.devices import cpu_bf16_feature
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


def original_modules(model: VQGAN):
    from taming.modules.diffusionmodules.model import Decoder, Encoder
    from taming.modules.vqvae.quantize import VectorQuantizer2

    c = model.config.autoencoder
    ddconfig = {k: getattr(c, k) for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
                                           "in_channels", "out_ch", "resolution", "z_channels", "double_z")}
    with contextlib.redirect_stdout(io.StringIO()):
        encoder, decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        quantizer = VectorQuantizer2(model.config.quantizer.num_codes, model.config.quantizer.embed_dim, beta=0.25)
    state = model.state_dict()
    for module, prefix in ((encoder, "encoder."), (decoder, "decoder."), (quantizer, "quantize.")):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return encoder.eval(), decoder.eval(), quantizer.eval()


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(fns: list, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each function, timed in rounds (one call of each per round) after one warm-up call each,
    so that drifts of the machine (clock, other load) fall on all of them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(_timed(fn, device))
    return [statistics.median(t) for t in times]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    fast_bf16 = cpu_bf16_feature()
    return (f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
            f"{f' + {fast_bf16}' if fast_bf16 else ' (no AMX or AVX512-BF16)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="also time tamer under bf16 autocast")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(quantizer=QuantizerConfig(num_codes=1024, embed_dim=256, legacy_loss=True)))
    model = model.to(device).eval()
    encoder, decoder, quantizer = (m.to(device) for m in original_modules(model))
    images = (torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1)

    def original_encode():
        return quantizer(model.quant_conv(encoder(images)))[2][2]

    with torch.inference_mode():
        indices = model.encode(images)
        original_latents = quantizer.get_codebook_entry(indices.flatten(), (*indices.shape, 256))

        def original_decode():
            return decoder(model.post_quant_conv(original_latents))

        rows = [("original (CompVis modules)", "fp32", original_encode, original_decode)]
        rows.append(("tamer (default layout)", "fp32", lambda: model.encode(images), lambda: model.decode(indices)))
        fast = VQGAN(model.config).to(device)
        fast.load_state_dict(model.state_dict())
        fast = fast.for_inference()
        rows.append(("tamer for_inference() (channels-last; CLI)", "fp32", lambda: fast.encode(images),
                     lambda: fast.decode(indices)))
        if args.bf16:
            def autocast(fn):
                def run():
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        return fn()
                return run
            rows.append(("tamer for_inference()", "bf16 autocast", autocast(lambda: fast.encode(images)),
                         autocast(lambda: fast.decode(indices))))

        encode_times = interleaved_medians([row[2] for row in rows], args.repeats, device)
        decode_times = interleaved_medians([row[3] for row in rows], args.repeats, device)
        results = [(row[0], row[1], e, d) for row, e, d in zip(rows, encode_times, decode_times)]

        same_indices = (model.encode(images) == original_encode().view(indices.shape)).float().mean().item()
        fast_same = (fast.encode(images) == original_encode().view(indices.shape)).float().mean().item()
        decode_diff = (model.decode(indices) - original_decode()).abs().max().item()
        fast_diff = (fast.decode(indices) - original_decode()).abs().max().item()
        bf16_same = None
        if args.bf16:  # the codebook distances stay fp32 under autocast: indices move only at near-ties
            bf16_same = (autocast(lambda: fast.encode(images))() == fast.encode(images)).float().mean().item()

    print(f"\nVQGAN f16 (ImageNet architecture, 1024 codes), {args.size}×{args.size}, batch {args.batch}, "
          f"median of {args.repeats} interleaved rounds; torch {torch.__version__}; {machine()}\n")
    print("| implementation | precision | encode s/batch | encode img/s | decode s/batch | decode img/s "
          "| encode × original | decode × original |")
    print("|---|---|---|---|---|---|---|---|")
    base_encode, base_decode = results[0][2], results[0][3]
    for name, precision, encode, decode in results:
        print(f"| {name} | {precision} | {encode:.3f} | {args.batch / encode:.2f} | {decode:.3f} | "
              f"{args.batch / decode:.2f} | {base_encode / encode:.2f} | {base_decode / decode:.2f} |")
    print(f"\nindices equal to the original's: {same_indices:.4f} (default), {fast_same:.4f} (for_inference); "
          f"max |decoded - original|: {decode_diff:.2e} (default), {fast_diff:.2e} (for_inference)")
    if bf16_same is not None:
        print(f"bf16 autocast indices equal to fp32's (for_inference): {bf16_same:.4f}")


if __name__ == "__main__":
    main()
