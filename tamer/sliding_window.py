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
  cache. A window whose ``i0`` changed starts afresh; the parts every window of a new row already knows (condition
  and the rows above) are run for all of them in one batched call.
- A spatial condition is tokenized once for the whole grid; windows crop the id grid.

Noise is keyed by the grid position ``i·W + j`` and the row's seed (:func:`tamer.sampling.draw`), so a seed gives
the same grid alone or in a batch; greedy decoding (``top_k=1``) gives exactly the original's grid.
"""

from __future__ import annotations

import sys

import torch
from .progress import progress_bar

from .nn.gpt import GPT
from .sampling import Callback, SamplingSettings, draw, guide, seed_rows


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


class _WindowCaches:
    """Keys and values of every window of the current row band, one slot per window column ``j0``.

    ``k[layer]`` is ``slots·R × heads × positions × head_dim`` (R rows per window: the samples, and their null rows
    under guidance); slot ``s`` holds rows ``s·R .. (s+1)·R``. ``filled[s]`` positions of slot ``s`` are computed
    for window ``(band, s)``.
    """

    def __init__(self, gpt: GPT, slots: int, rows: int, max_len: int, device, dtype):
        c = gpt.config
        shape = (c.n_layer, slots * rows, c.n_head, max_len, c.n_embd // c.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.rows = rows
        self.band = [-1] * slots
        self.filled = [0] * slots

    def view(self, first: int, last: int):
        """Keys and values of slots ``first .. last`` (inclusive)."""
        rows = slice(first * self.rows, (last + 1) * self.rows)
        return self.k[:, rows], self.v[:, rows]


# Rows (windows × samples) per batched call when a band starts; bounds the activation memory of those calls.
_BATCH_ROWS = 32
# Default bound on the memory of the window caches (keys and values); more windows than fit are recomputed.
CACHE_BYTES = 4 << 30


def _extend(gpt: GPT, k_cache: torch.Tensor, v_cache: torch.Tensor, tokens: torch.Tensor, start: int,
            logits: bool = True) -> torch.Tensor | None:
    """:meth:`GPT.extend` on one window's caches (a seam: ``bench/bench_sliding_window.py`` wraps it to count the
    positions run)."""
    return gpt.extend(tokens, start, k_cache, v_cache, logits=logits)


@torch.no_grad()
def sample_sliding_window(model, condition, num_samples: int, code_shape, settings: SamplingSettings | None = None,
                          seed: int | None = None, callback: Callback | None = None,
                          init_codes: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
                          progress: bool | None = None, max_cached_windows: int | None = None) -> torch.Tensor:
    """Sample ``num_samples`` code grids ``B×H×W`` (``code_shape``) from a :class:`tamer.Transformer` trained on a
    smaller grid, with the original's sliding window.

    ``condition``: None, class labels, or a spatial map for the whole grid (its token grid must be ``H×W``).
    ``init_codes`` (``B×H×W``): what the grid holds before sampling (the original started from the image's codes).
    The sampler never reads a token before it is sampled, so it cannot change the result; it is accepted for
    parity and checked. ``prefix`` (``B×k``, reading order): tokens kept as they are; sampling starts at ``k``
    (image completion). ``callback(k, grid)`` runs after the ``k``-th new token (from 0) with the whole grid
    (``B×H×W``, not yet sampled places hold ``init_codes``). ``progress``: a tqdm bar; None shows it when stderr
    is a terminal and no callback is given. ``max_cached_windows``: how many window caches to keep (at most the
    ``W - ww + 1`` of a row band are used; each holds ``2·n_layer·rows·(L + wh·ww - 1)·n_embd`` numbers, rows =
    samples, twice that under guidance); the default keeps as many as fit in :data:`CACHE_BYTES` (4 GiB). Fewer
    save memory and cost recomputation, never a different result.

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

    slots = (W - ww) // step + 1  # window columns j0 = 0, step, 2·step, ...; slot c holds j0 = c·step
    if max_cached_windows is None:
        c = gpt.config
        window_bytes = 2 * c.n_layer * R * needed * c.n_embd * gpt.pos_emb.element_size()
        max_cached_windows = max(1, CACHE_BYTES // window_bytes)
    capacity = min(slots, max_cached_windows)
    caches = _WindowCaches(gpt, capacity, R, needed, device, gpt.pos_emb.dtype)
    # Window column c lives in slot c when all fit; otherwise the first capacity-1 columns keep their slots and
    # the others share the last one (a cyclic access pattern: evicting the most recent use loses least).
    slot_of = [min(c, capacity - 1) for c in range(slots)]
    owner = [-1] * capacity

    def window_tokens(i0: int, j0: int, stop: int) -> torch.Tensor:
        """The window's sequence (condition, then image tokens in reading order) up to position ``stop``."""
        c = cond[:, i0:i0 + wh, j0:j0 + ww].reshape(R, -1) if spatial else cond
        if stop <= L:
            return c[:, :stop]
        rows = -(-(stop - L) // ww)  # only the image rows that are needed
        image = grid[:, i0:i0 + rows, j0:j0 + ww].reshape(B, -1)
        if settings.guided:
            image = torch.cat((image, image))
        return torch.cat((c, image), dim=1)[:, :stop]

    show = (callback is None and sys.stderr.isatty()) if progress is None else progress
    bar = progress_bar(total=H * W - first, desc="sliding window", unit="tok", disable=not show)
    was_training = gpt.training
    gpt.eval()
    try:
        band = -1
        for position in range(first, H * W):
            i, j = divmod(position, W)
            i0 = window_offset(i, H, wh)
            if i0 != band:
                # A new band: every window of this row starts afresh. What they all know already (the condition and
                # the window rows above row i) runs for all of them in batched calls; the last known position is
                # left to the first token of each window, which needs its logits.
                band = i0
                known = L + (i - i0) * ww - 1
                if known >= max(1, gpt.config.n_unmasked):
                    own = [c for c in range(column_offset(j) // step, slots)
                           if capacity == slots or c < capacity - 1]
                    per_call = max(1, _BATCH_ROWS // R)
                    for n in range(0, len(own), per_call):
                        group = own[n:n + per_call]
                        tokens = torch.cat([window_tokens(i0, c * step, known) for c in group])
                        _extend(gpt, *caches.view(group[0], group[-1]), tokens, 0, logits=False)
                        for c in group:
                            caches.band[c], caches.filled[c], owner[c] = i0, known, c
            j0 = column_offset(j)
            c = j0 // step
            s = slot_of[c]
            if caches.band[s] != i0 or owner[s] != c:
                caches.band[s], caches.filled[s], owner[s] = i0, 0, c
            stop = L + (i - i0) * ww + (j - j0)  # the window place of (i, j) is stop - L; its logits sit at stop - 1
            start = caches.filled[s]
            if start >= stop:
                raise AssertionError("sliding window: a window revisited an earlier place")  # raster order forbids
            k_view, v_view = caches.view(s, s)
            logits = _extend(gpt, k_view, v_view, window_tokens(i0, j0, stop)[:, start:], start)
            caches.filled[s] = stop
            logits = logits[:, :vocab]
            if settings.guided:
                logits = guide(logits, settings.cfg_scale)
            grid[:, i, j] = draw(logits, settings, seeds, position)
            bar.update(1)
            if callback is not None:
                callback(position - first, grid)
    finally:
        bar.close()
        gpt.train(was_training)
    return grid
