"""Sampling code grids larger than the training window with a sliding attention window (the original's
``scripts/sample_conditional.py`` and notebook loop), with the same results and far less work.

The original algorithm, for a grid ``H×W`` and a model trained on ``wh×ww`` tokens: for every position ``(i, j)`` in
reading order, place a ``wh×ww`` window around it (centred, offset ``wh//2``, clamped at the borders; see
:func:`window_offset`), put the window's condition tokens (a spatial condition cropped to the window) and its image
tokens in reading order into the GPT, and sample ``(i, j)`` from the logits at its place in the window. It ran a
full forward over all ``L + wh·ww - 1`` positions for every token.

What this module does instead, for identical logits:

- Attention is causal, so the logits at window place ``k`` depend only on the condition and the ``k`` window tokens
  before it, all already sampled: only that prefix is computed, never the rest of the window.
- Each window keeps a KV cache. The window of ``(i, j)`` is fixed by its top-left corner ``(i0, j0)``; rows near
  the top and bottom of the grid share ``i0``, and tokens near the left and right borders of a row share ``j0``.
  When a window comes back, only the tokens sampled since it was last used are run (one chunk), on top of its
  cache; a new window runs its condition and known tokens in one chunk.
- Wavefront schedule: a token can be drawn as soon as every token its window's prefix reads is known (the window's
  rows above it, all its columns, and its own row to its left), so a row runs while the row above is still ahead of
  it. Each step draws the next token of every such row; their chunks (different windows, caches and lengths) run in
  one GPT call (:meth:`GPT.extend_chunks`: the linear layers over all their positions at once, attention per
  window): on the CPU, where a call of few positions is bound by reading the weights, far less than a call per
  chunk. The ``raster`` schedule draws one token per call in reading order; both give the same grid. A row's first
  token reads the first ``ww`` columns of the row above, so each row starts ``ww`` steps after the one above and the
  wavefront takes ``W + (H - 1)·ww`` steps; the positions run are the same in both (BENCHMARKS.md: they, not the
  calls, bound large grids).
- A spatial condition is tokenized once for the whole grid; windows crop the id grid.

Noise is keyed by the grid position ``i·W + j`` and the row's seed (:func:`tamer.ar.sampling.draw`), so a seed gives
the same grid alone or in a batch; greedy decoding (``top_k=1``) gives exactly the original's grid.
"""

from __future__ import annotations

import sys

import torch

from tamer.ar.sampling import Callback, SamplingSettings, draw, guide, seed_rows
from tamer.nn.gpt import GPT
from tamer.progress import progress_bar


def window_offset(index: int, size: int, window: int) -> int:
    """First row (or column) of the window used for the token at ``index`` of a grid side ``size``.

    The original (``window=16``): ``local = index if index <= 8 else (16 - (size - index) if size - index < 8
    else 8)`` and the window starts at ``index - local``; i.e. the token sits at place ``window // 2`` of its window
    unless that would cross a border. Written here so that odd windows stay inside the grid too (for even windows
    ``window - half == half``, the original's test).
    """
    half = window // 2
    if index <= half:
        return 0
    if size - index < window - half:
        return size - window
    return index - half


# Positions (window rows × tokens) per GPT call at most: a larger wave is split, which bounds its activations.
_MAX_POSITIONS = 1 << 14
# Default bound on the memory of the window caches (keys and values); more windows than fit are recomputed.
CACHE_BYTES = 4 << 30
SCHEDULES = ("wavefront", "raster")


def _run_chunks(gpt: GPT, chunks: list) -> torch.Tensor:
    """:meth:`GPT.extend_chunks` (a seam: ``bench/bench_sliding_window.py`` wraps it to count calls and
    positions)."""
    return gpt.extend_chunks(chunks)


class _WindowCaches:
    """Keys and values of up to ``capacity`` windows, one slot each, allocated on first use.

    A window is named by its top-left corner ``(i0, j0)``; ``filled[corner]`` positions of its sequence are in its
    slot. A window whose last token is drawn gives its slot back (:meth:`release`); when every slot holds a window
    still to be used, the one used again latest (``next_use``) loses its slot and is recomputed when it comes back.
    """

    def __init__(self, gpt: GPT, capacity: int, rows: int, max_len: int, device, dtype):
        c = gpt.config
        self.shape = (c.n_layer, rows, c.n_head, max_len, c.n_embd // c.n_head)
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self.slots: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.slot_of: dict[tuple[int, int], int] = {}
        self.filled: dict[tuple[int, int], int] = {}
        self.free: list[int] = []

    def take(self, corner, busy, next_use) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Keys, values and filled length of the window at ``corner``; ``busy``: corners that keep their slots."""
        if corner not in self.slot_of:
            if self.free:
                slot = self.free.pop()
            elif len(self.slots) < self.capacity:
                slot = len(self.slots)
                self.slots.append((torch.empty(self.shape, device=self.device, dtype=self.dtype),
                                   torch.empty(self.shape, device=self.device, dtype=self.dtype)))
            else:
                victim = max((c for c in self.slot_of if c not in busy), key=next_use)
                slot = self.slot_of.pop(victim)
                del self.filled[victim]
            self.slot_of[corner], self.filled[corner] = slot, 0
        return (*self.slots[self.slot_of[corner]], self.filled[corner])

    def release(self, corner) -> None:
        self.free.append(self.slot_of.pop(corner))
        del self.filled[corner]


@torch.no_grad()
def sample_sliding_window(model, condition, num_samples: int, code_shape, settings: SamplingSettings | None = None,
                          seed: int | None = None, callback: Callback | None = None,
                          init_codes: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                          progress: bool | None = None, max_cached_windows: int | None = None,
                          schedule: str = "wavefront") -> torch.Tensor:
    """Sample ``num_samples`` code grids ``B×H×W`` (``code_shape``) from a :class:`tamer.Transformer` trained on a
    smaller grid, with the original's sliding window.

    ``condition``: None, class labels, or a spatial map for the whole grid (its token grid must be ``H×W``).
    ``init_codes`` (``B×H×W``): what the grid holds before sampling (the original started from the image's codes).
    The sampler never reads a token before it is sampled, so it cannot change the result; it is accepted for
    parity and checked. ``prefix`` (``B×k``, reading order): tokens kept as they are; sampling starts at ``k``
    (image completion). ``callback(k, grid)`` runs once for every new token, ``k = 0, 1, ...`` in the order
    drawn, with the whole grid (``B×H×W``, not yet sampled places hold ``init_codes``); the wavefront schedule draws
    several tokens per step and calls back for each after the step (so the grid may already hold later ones), and
    its order is not reading order. ``progress``: a tqdm bar; None shows it when stderr is a terminal and no
    callback is given. ``max_cached_windows``: how many window caches to keep (each holds
    ``2·n_layer·rows·(L + wh·ww - 1)·n_embd`` numbers, rows = samples, twice that under guidance, allocated when
    first needed); the default allows as many as fit in :data:`CACHE_BYTES` (4 GiB). Fewer save memory and cost
    recomputation (and a wavefront step draws at most that many tokens), never a different result. ``schedule``:
    "wavefront" (default) or "raster" (one token per GPT call in reading order; the same grid, slower).

    A residual first stage (``depth`` codes per position side by side along the width) moves its windows by whole
    positions: a window's first column is ``depth × window_offset`` of the position, so it never splits the codes
    of one position, and ``(W - ww) / depth + 1`` windows share a row band.
    """
    settings = settings or SamplingSettings()
    gpt: GPT = model.transformer
    H, W = (int(s) for s in code_shape)
    wh, ww = (int(s) for s in model.config.code_shape)
    B = int(num_samples)
    if model.config.token_order != "raster":
        raise ValueError("sliding-window sampling needs raster token order, the model reads "
                         f"{model.config.token_order!r}")
    if H < wh or W < ww:
        raise ValueError(f"sliding-window sampling: the grid {H}×{W} is smaller than the model's window {wh}×{ww}")
    step = model.config.first_stage.quantizer.codes_per_position  # a residual stage's codes of one position
    if W % step:
        raise ValueError(f"sliding-window sampling: the first stage has {step} codes per position, so the grid width "
                         f"must be a multiple of {step}, got {H}×{W}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if max_cached_windows is not None and max_cached_windows < 1:
        raise ValueError(f"max_cached_windows: expected a positive number or None, got {max_cached_windows}")

    cond = model.condition_tokens(condition, B)
    device = cond.device
    spatial = bool(getattr(model.cond_stage_model, "spatial", False))
    if spatial:
        if tuple(cond.shape[1:]) != (H, W):
            raise ValueError(f"spatial condition: its token grid is {tuple(cond.shape[1:])}, the requested code "
                             f"grid is {(H, W)}; give a condition map for the whole image")
        L = wh * ww
    else:
        cond = cond.reshape(B, -1)
        L = cond.shape[1]
    if L < 1:
        raise ValueError("sliding-window sampling needs at least one condition token (a start token)")
    needed = L + wh * ww - 1
    if needed > gpt.block_size:
        raise ValueError(f"sliding-window sampling: {L} condition + {wh * ww} window tokens need block_size >= "
                         f"{needed}, the model has {gpt.block_size}")
    if gpt.config.n_unmasked > L:
        raise ValueError(f"sliding-window sampling: n_unmasked={gpt.config.n_unmasked} reaches past the {L} "
                         "condition tokens into not yet sampled image tokens")
    if settings.guided:
        cond = torch.cat((cond, model.cond_stage_model.null_like(cond)))
    R = cond.shape[0]  # rows per window: the samples, then their null rows under guidance
    vocab = model.image_vocab_size

    if init_codes is None:
        grid = torch.zeros(B, H, W, dtype=torch.long, device=device)
    else:
        if tuple(init_codes.shape) != (B, H, W):
            raise ValueError(f"init_codes: expected {(B, H, W)}, got {tuple(init_codes.shape)}")
        grid = init_codes.to(device=device, dtype=torch.long).clone()
    first = 0
    if prefix is not None:
        if prefix.dim() != 2 or prefix.shape[0] != B or prefix.shape[1] > H * W:
            raise ValueError(f"prefix: expected {B}×k with k <= {H * W}, got {tuple(prefix.shape)}")
        first = prefix.shape[1]
        grid.view(B, -1)[:, :first] = prefix.to(device)
    if int(grid.min()) < 0 or int(grid.max()) >= vocab:
        raise ValueError(f"init_codes/prefix: codes must lie in 0..{vocab - 1}")
    seeds = seed_rows(seed, B, device)

    def column_offset(j: int) -> int:
        """The window's first column for column ``j``: whole positions, so a window never splits one's codes."""
        return step * window_offset(j // step, W // step, ww // step)

    row_corner = [window_offset(i, H, wh) for i in range(H)]  # the window's first row for each grid row
    col_corner = [column_offset(j) for j in range(W)]
    band_rows: dict[int, list[int]] = {}  # rows whose windows start at row i0 (consecutive)
    for i, i0 in enumerate(row_corner):
        band_rows.setdefault(i0, []).append(i)
    col_span: dict[int, tuple[int, int]] = {}  # first and last column whose windows start at column j0
    for j, j0 in enumerate(col_corner):
        col_span[j0] = (col_span.get(j0, (j, j))[0], j)

    if max_cached_windows is None:
        c = gpt.config
        window_bytes = 2 * c.n_layer * R * needed * c.n_embd * gpt.pos_emb.element_size()
        max_cached_windows = max(1, CACHE_BYTES // window_bytes)
    caches = _WindowCaches(gpt, max_cached_windows, R, needed, device, gpt.pos_emb.dtype)
    done = [min(W, max(0, first - i * W)) for i in range(H)]  # tokens known in each row, always non-increasing

    def ready_tokens() -> list[tuple[int, int]]:
        """The tokens that can be drawn now: the next of each row whose window reads only known tokens (``done``
        never increases down the grid, so the row above is the least advanced of the window's rows). Raster: the
        first."""
        tokens = []
        for i in range(H):
            j = done[i]
            if j == W:
                continue
            if i == row_corner[i] or done[i - 1] >= col_corner[j] + ww:
                tokens.append((i, j))
                if schedule == "raster" or len(tokens) == caches.capacity:  # each token of a wave holds a slot
                    break
            elif j == 0:  # every row below waits for this one
                break
        return tokens

    def next_use(corner: tuple[int, int]) -> int:
        """Grid position of the next token that reads the window at ``corner`` (which loses its slot first)."""
        first_col, last_col = col_span[corner[1]]
        return min((i * W + max(done[i], first_col) for i in band_rows[corner[0]] if done[i] <= last_col),
                   default=H * W)

    def window_tokens(i0: int, j0: int, start: int, stop: int) -> torch.Tensor:
        """Positions ``start .. stop-1`` of the window's sequence: the condition, then its tokens in reading order."""
        parts = []
        if start < L:
            c = cond[:, i0:i0 + wh, j0:j0 + ww].reshape(R, -1) if spatial else cond
            parts.append(c[:, start:stop])
        if stop > L:
            a, b = max(start, L) - L, stop - L  # window places
            rows = grid[:, i0 + a // ww:i0 + (b - 1) // ww + 1, j0:j0 + ww].reshape(B, -1)
            image = rows[:, a % ww:a % ww + b - a]
            parts.append(torch.cat((image, image)) if settings.guided else image)
        return torch.cat(parts, dim=1)

    show = (callback is None and sys.stderr.isatty()) if progress is None else progress
    total = H * W - first
    bar = progress_bar(total=total, desc="sliding window", unit="tok", disable=not show)
    was_training = gpt.training
    gpt.eval()
    try:
        drawn = 0
        while drawn < total:
            tokens = ready_tokens()
            corners = [(row_corner[i], col_corner[j]) for i, j in tokens]
            chunks, stops, busy = [], [], set(corners)
            for (i, j), (i0, j0) in zip(tokens, corners):
                k_cache, v_cache, start = caches.take((i0, j0), busy, next_use)
                stop = L + (i - i0) * ww + (j - j0)  # the window place of (i, j) is stop - L; its logits: stop - 1
                if start >= stop:
                    raise AssertionError("sliding window: a window revisited an earlier place")  # causal order
                chunks.append((window_tokens(i0, j0, start, stop), start, k_cache, v_cache))
                stops.append(stop)
            logits = torch.cat([_run_chunks(gpt, group) for group in _calls(chunks)])[:, :vocab]
            for n, ((i, j), corner) in enumerate(zip(tokens, corners)):
                rows = logits[n * R:(n + 1) * R]
                grid[:, i, j] = draw(guide(rows, settings.cfg_scale) if settings.guided else rows, settings, seeds,
                                     i * W + j)
                done[i] += 1
                caches.filled[corner] = stops[n]
                if i == band_rows[corner[0]][-1] and j == col_span[corner[1]][1]:  # the window's last token
                    caches.release(corner)
            bar.update(len(tokens))
            for _ in tokens:  # one call per token, after its wave
                if callback is not None:
                    callback(drawn, grid)
                drawn += 1
    finally:
        bar.close()
        gpt.train(was_training)
    return grid


def _calls(chunks: list) -> list[list]:
    """The chunks of one wave in GPT calls of at most :data:`_MAX_POSITIONS` positions (one chunk at least)."""
    calls, size = [[]], 0
    for chunk in chunks:
        positions = chunk[0].numel()
        if calls[-1] and size + positions > _MAX_POSITIONS:
            calls.append([])
            size = 0
        calls[-1].append(chunk)
        size += positions
    return calls
