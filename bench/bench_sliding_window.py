"""Sliding-window sampling of a code grid larger than the training window: the original algorithm
(``scripts/sample_conditional.py``: the original minGPT, a full forward over the whole window for every token)
against ``tamer.ar.sliding_window``, same weights, same process, greedy decoding (so both must choose the same tokens).

    .venv/bin/python bench/bench_sliding_window.py [--grid 32 32] [--batch 1] [--repeats 1]
        [--conditions none spatial] [--original-rows all|N] [--schedules wavefront raster] [--threads N]
        [--device cpu]

Configuration of the stage-2 issue: a 16×16 window, GPT 12 layers × 8 heads × 512 wide, vocabulary 1024; the
condition is a start token ("none", 1 token per window) or a spatial condition ("spatial": a coordinate stage,
256 tokens per window, cropped like the image).

The original costs the same for every token (one forward of ``L + 255`` positions), so on a slow machine it can be
timed on ``--original-rows N`` rows spread over the grid and scaled to the whole grid. Those rows are then checked
with teacher forcing: the original reads the grid tamer sampled and must choose every token of those rows as tamer
did (with ``all``, it samples the whole grid from scratch and the two grids must be equal). Every schedule's grid
must equal the first one's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types

import torch

import tamer.ar.sliding_window as sw
from bench_vqgan import _timed, machine
from tamer import SamplingSettings, Transformer, TransformerConfig
from tamer.config import from_dict

WINDOW = 16
GPT = {"vocab_size": 1024, "block_size": 512, "n_layer": 12, "n_head": 8, "n_embd": 512}
# A small f16 first stage: the benchmark never decodes, it only needs the code-grid geometry.
FIRST_STAGE = {"autoencoder": {"ch": 32, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
                               "resolution": 256, "z_channels": 8},
               "quantizer": {"num_codes": 1024, "embed_dim": 8}}
CONDITIONS = {  # condition ids share the image vocabulary (offset 0), as in the original's models
    "none": {"kind": "none", "token_offset": 0},
    "spatial": {"kind": "coord", "key": "coord", "coord_levels": 1023, "coord_factor": 16, "token_offset": 0},
}


def original_algorithm(gpt, cidx: torch.Tensor, idx: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """scripts/sample_conditional.py's loop (``sample=False``), as written there, over the given rows of ``idx``
    (``B×H×W``, changed in place). ``cidx``: ``B×H×W`` condition ids (cropped like the image), or ``B×1`` for a
    start token (which the script, written for spatial conditions, would crop; it is used as is)."""
    cshape = (idx.shape[0], None, idx.shape[1], idx.shape[2])
    temperature, top_k = 1.0, 100
    for i in rows:
        if i <= 8:
            local_i = i
        elif cshape[2]-i < 8:
            local_i = 16-(cshape[2]-i)
        else:
            local_i = 8
        for j in range(0, cshape[3]-0):
            if j <= 8:
                local_j = j
            elif cshape[3]-j < 8:
                local_j = 16-(cshape[3]-j)
            else:
                local_j = 8

            i_start = i-local_i
            i_end = i_start+16
            j_start = j-local_j
            j_end = j_start+16
            patch = idx[:, i_start:i_end, j_start:j_end]
            patch = patch.reshape(patch.shape[0], -1)
            cpatch = cidx[:, i_start:i_end, j_start:j_end] if cidx.dim() == 3 else cidx
            cpatch = cpatch.reshape(cpatch.shape[0], -1)
            patch = torch.cat((cpatch, patch), dim=1)
            logits, _ = gpt(patch[:, :-1])
            logits = logits[:, -256:, :]
            logits = logits.reshape(cshape[0], 16, 16, -1)
            logits = logits[:, local_i, local_j, :]

            logits = logits/temperature

            if top_k is not None:  # the original's Net2NetTransformer.top_k_logits
                v, ix = torch.topk(logits, top_k)
                logits = logits.clone()
                logits[logits < v[..., [-1]]] = -float('Inf')
            # apply softmax to convert to probabilities
            probs = torch.nn.functional.softmax(logits, dim=-1)
            _, ix = torch.topk(probs, k=1, dim=-1)
            idx[:, i, j] = ix[:, 0]
    return idx


def timed(fn, device: torch.device):
    """``fn()`` and the seconds it took."""
    out = []
    seconds = _timed(lambda: out.append(fn()), device)
    return out[0], seconds


def spread_rows(height: int, count: int) -> list[int]:
    """``count`` rows from the top band, the middle and the bottom band, in order."""
    if count >= height:
        return list(range(height))
    thirds = [count // 3 + (k < count % 3) for k in range(3)]
    starts = [0, (height - thirds[1]) // 2, height - thirds[2]]
    return sorted({r for s, n in zip(starts, thirds) for r in range(s, s + n)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, nargs=2, default=(32, 32), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=["none"])
    parser.add_argument("--original-rows", default="all", help="'all', or how many rows to time the original on")
    parser.add_argument("--schedules", nargs="+", choices=list(sw.SCHEDULES), default=list(sw.SCHEDULES),
                        help="tamer's schedules to time (the first one's grid is checked against the original)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    H, W = args.grid
    B = args.batch
    rows = list(range(H)) if args.original_rows == "all" else spread_rows(H, int(args.original_rows))

    # The original module imports a `transformers` helper that greedy decoding never calls.
    stub = sys.modules.setdefault("transformers", types.ModuleType("transformers"))
    stub.top_k_top_p_filtering = getattr(stub, "top_k_top_p_filtering", None)
    from taming.modules.transformer import mingpt

    torch.manual_seed(0)
    weights = None
    results = []
    for name in args.conditions:
        config = from_dict(TransformerConfig, {"gpt": GPT, "first_stage": FIRST_STAGE, "code_shape": [WINDOW, WINDOW],
                                               "conditioning": CONDITIONS[name]})
        model = Transformer(config)
        if weights is None:  # one set of weights for every condition; spread logits: no near-ties for greedy
            with torch.no_grad():
                model.transformer.tok_emb.weight.mul_(10)
                model.transformer.head.weight.mul_(10)
            weights = model.transformer.state_dict()
        model.transformer.load_state_dict(weights)
        model = model.to(device).eval()
        original = mingpt.GPT(**GPT)
        original.load_state_dict(weights, strict=False)  # only its attention-mask buffers are not ours
        original = original.to(device).eval()
        ramp = torch.linspace(0, 1, H * 16, device=device)[:, None] * 0.7 + torch.linspace(0, 0.3, W * 16,
                                                                                          device=device)
        condition = ramp.expand(B, 1, H * 16, W * 16) if name == "spatial" else None
        cidx = model.condition_tokens(condition, B)
        L = WINDOW * WINDOW if name == "spatial" else 1
        settings = SamplingSettings(top_k=1)

        calls = []  # per GPT call: positions run
        run = sw._run_chunks

        def counting(gpt, chunks):
            calls.append(sum(tokens.numel() for tokens, *_ in chunks))
            return run(gpt, chunks)

        def tamer_grid(schedule):
            return lambda: sw.sample_sliding_window(model, condition, B, (H, W), settings, progress=False,
                                                    schedule=schedule)

        with torch.inference_mode():
            # Warm-up: a short call of each. Then interleaved rounds; the first also counts and checks the tokens.
            small = (WINDOW, WINDOW + 1)
            crop = None if condition is None else condition[..., :16 * small[0], :16 * small[1]]
            for schedule in args.schedules:
                sw.sample_sliding_window(model, crop, B, small, settings, progress=False, schedule=schedule)
            original_algorithm(original, cidx[:, :small[0], :small[1]] if cidx.dim() == 3 else cidx,
                               torch.zeros(B, *small, dtype=torch.long, device=device), [0])
            times = {schedule: [] for schedule in args.schedules}
            grids, counts = {}, {}
            for schedule in args.schedules:
                calls.clear()
                sw._run_chunks = counting
                grids[schedule], seconds = timed(tamer_grid(schedule), device)
                sw._run_chunks = run
                times[schedule].append(seconds)
                counts[schedule] = (sum(calls), len(calls))
                print(f"{name}, {schedule}: {seconds:.1f} s, {sum(calls):,} positions in {len(calls):,} calls",
                      file=sys.stderr, flush=True)
            grid = grids[args.schedules[0]]
            context = torch.zeros_like(grid) if len(rows) == H else grid.clone()

            def original_rows():
                return original_algorithm(original, cidx, context.clone(), rows)

            chosen, seconds = timed(original_rows, device)
            original_times = [seconds]
            print(f"{name}, original: {seconds:.1f} s on {len(rows)} rows", file=sys.stderr, flush=True)
            agree = {schedule: bool(torch.equal(chosen[:, rows], g[:, rows]) and torch.equal(g, grid))
                     for schedule, g in grids.items()}
            for _ in range(args.repeats - 1):
                original_times.append(_timed(original_rows, device))
                for schedule in args.schedules:
                    times[schedule].append(_timed(tamer_grid(schedule), device))
        original_s = statistics.median(original_times) * H / len(rows)
        results.append((name, L, original_s, B * H * W * (L + 255), H * W,
                        [(schedule, statistics.median(times[schedule]), *counts[schedule], agree[schedule])
                         for schedule in args.schedules]))

    span = "the whole grid" if len(rows) == H else f"rows {rows} of {H}, scaled to the grid"
    print(f"\nSliding-window sampling: {H}×{W} grid from a {WINDOW}×{WINDOW} window, batch {B}, 12 layers × 8 heads "
          f"× 512 wide, vocabulary 1024, fp32, greedy, median of {args.repeats} interleaved round(s) after a short "
          f"warm-up; original timed on {span}; torch {torch.__version__}; {machine()}\n")
    print("| condition | sampler | s per grid | tokens/s | GPT positions run | GPT calls | × original | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, L, original_s, original_positions, original_calls, samplers in results:
        label = f"{name} ({L} token{'s' if L > 1 else ''} per window)"
        tokens = B * H * W
        print(f"| {label} | original (full forward per token) | {original_s:.1f} | {tokens / original_s:.2f} | "
              f"{original_positions:,} | {original_calls:,} | 1.0 | |")
        for schedule, tamer_s, positions, calls, agree in samplers:
            print(f"| {label} | tamer sliding_window, {schedule} | {tamer_s:.1f} | {tokens / tamer_s:.2f} | "
                  f"{positions:,} | {calls:,} | {original_s / tamer_s:.1f} | {'yes' if agree else 'NO'} |")

if __name__ == "__main__":
    main()
