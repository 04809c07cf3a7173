"""Tokens per second when sampling from the GPT: tamer's KV cache against the original's sample() and
sample_with_past(), same weights, same process, greedy decoding (so all three must produce the same tokens).

    .venv/bin/python bench/bench_gpt_sampling.py [--new-tokens 256] [--batch 4] [--repeats 3] [--threads N]
        [--device cpu]

tamer is timed through ``tamer.ar.sampling.sample_tokens`` (the model-level sampler: prefill, then one-token
``GPT.decode_one`` steps).

Configuration of the stage-2 issue: 12 layers, 8 heads, 512 wide, vocabulary 1024, one start token.
"""

from __future__ import annotations

import argparse
import sys
import types

import torch

from bench_vqgan import interleaved_medians, machine
from tamer.ar.sampling import SamplingSettings, sample_tokens
from tamer.nn.gpt import GPT, GPTConfig, weights_held_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="also time tamer with the GPT's weights held in bf16 under bf16 autocast (what "
                             "`tamer sample` does when its precision resolves to bf16)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # The original module imports a `transformers` helper that greedy decoding never calls.
    stub = sys.modules.setdefault("transformers", types.ModuleType("transformers"))
    stub.top_k_top_p_filtering = getattr(stub, "top_k_top_p_filtering", None)
    from taming.modules.transformer import mingpt

    config = GPTConfig(vocab_size=1024, block_size=args.new_tokens + 1, n_layer=12, n_head=8, n_embd=512)
    torch.manual_seed(0)
    ours = GPT(config).to(device).eval()
    original = mingpt.GPT(vocab_size=1024, block_size=config.block_size, n_layer=12, n_head=8, n_embd=512)
    original.load_state_dict(ours.state_dict(), strict=False)  # only its attention-mask buffers are not ours
    original = original.to(device).eval()
    start = torch.randint(0, 1024, (args.batch, 1), device=device)
    steps = args.new_tokens
    greedy, seeds = SamplingSettings(top_k=1), torch.arange(args.batch, device=device)

    with torch.inference_mode():
        outputs = {
            "original sample()": lambda: mingpt.sample(original, start, steps, sample=False)[:, 1:],
            "original sample_with_past()": lambda: mingpt.sample_with_past(start, original, steps,
                                                                           sample_logits=False),
            "tamer sample_tokens() (static KV cache)": lambda: sample_tokens(ours, start, steps, greedy, seeds),
        }
        if args.bf16:
            def bf16_weights():
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    with weights_held_in(ours, torch.bfloat16):
                        return sample_tokens(ours, start, steps, greedy, seeds)
            outputs["tamer sample_tokens(), bf16 weights"] = bf16_weights
        tokens = {}

        def keeping_first(name, fn):  # the warm-up call's tokens are the ones compared
            return lambda: tokens.setdefault(name, fn())

        times = interleaved_medians([keeping_first(name, fn) for name, fn in outputs.items()], args.repeats, device)
        reference = tokens["original sample()"]
        agree = {name: bool(torch.equal(t, reference)) for name, t in tokens.items()}
        bf16_agree = None
        if args.bf16:  # greedy tokens part ways at the first near-tie; the share equal is what can be compared
            bf16_agree = (tokens["tamer sample_tokens(), bf16 weights"] == reference).float().mean().item()

    print(f"\nGPT sampling: {steps} new tokens, batch {args.batch}, 12 layers × 8 heads × 512 wide, vocabulary "
          f"1024, greedy, median of {args.repeats} interleaved rounds; torch {torch.__version__}; {machine()}\n")
    print("| sampler | s | tokens/s | × sample() | × sample_with_past() | same tokens |")
    print("|---|---|---|---|---|---|")
    for (name, seconds) in zip(outputs, times):
        print(f"| {name} | {seconds:.2f} | {args.batch * steps / seconds:.1f} | {times[0] / seconds:.1f} | "
              f"{times[1] / seconds:.2f} | {'yes' if agree[name] else 'NO'} |")
    if bf16_agree is not None:
        print(f"\nbf16 weights: {bf16_agree:.1%} of the greedy tokens equal to fp32's (random weights give near-ties; "
              "a trained model's likelihood under bf16 is checked by `tamer eval nll --precision bf16`)")


if __name__ == "__main__":
    main()
