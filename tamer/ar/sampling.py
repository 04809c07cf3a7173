"""Drawing tokens: logits processors and the KV-cached sampling loop.

Randomness is counter-based: the noise for a token depends only on the row's seed and the token's position in
the code grid, never on the batch it was drawn in or on the device's random generator. So sample ``seed=7``
is the same image whether it is drawn alone or in a batch of 64, at any window position, and a seed printed
in a log reproduces its image. Drawing is the Gumbel-max trick, which samples exactly ``softmax(logits / T)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tamer.config import checked_keywords
from tamer.guards import check_seed
from tamer.nn.gpt import GPT


@checked_keywords
@dataclass
class SamplingSettings:
    temperature: float = 1.0
    top_k: int | None = None  # 1 is greedy
    top_p: float | None = None
    # Classifier-free guidance: logits = null + scale * (cond - null); 1.0 is off.
    cfg_scale: float = 1.0

    def __post_init__(self):
        for name in ("temperature", "cfg_scale", "top_p"):  # NaN passes every comparison below, and samples zeros
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}: must be a finite number, got {value}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k: expected a positive integer or None, got {self.top_k}")
        if self.top_k != 1 and self.temperature <= 0:
            raise ValueError(f"temperature: must be positive, got {self.temperature} (use top_k=1 for greedy)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected a value in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.top_k == 1

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits (ties with the k-th included, as in the original); the rest become -inf."""
    k = min(int(k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens until their probability reaches ``p`` (the token that crosses
    ``p`` is kept, and always at least one); the rest become -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    remove_sorted = mass_before > p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def guide(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Rows ``[cond; null]`` (``2B×V``) -> guided logits ``B×V``."""
    cond, null = logits.float().chunk(2)
    return null + scale * (cond - null)


def process(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p; filtered entries become -inf."""
    logits = logits.float() / settings.temperature
    if settings.top_k is not None:
        logits = top_k_filter(logits, settings.top_k)
    if settings.top_p is not None and settings.top_p < 1.0:
        logits = top_p_filter(logits, settings.top_p)
    return logits


# splitmix64 constants as signed int64 (torch has no uint64 arithmetic); shifts are made logical by masking.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hashed_uniform(seeds: torch.Tensor, position: int, size: int) -> torch.Tensor:
    """Uniform noise in (0, 1), ``B×size``, a pure function of (seed, position, column): splitmix64 of a counter."""
    columns = torch.arange(size, device=seeds.device, dtype=torch.long)
    counter = (seeds.long()[:, None] * (1 << 40) + position * (1 << 20) + columns) * _GOLDEN
    z = (counter ^ _shift_right(counter, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return (_shift_right(z, 40).float() + 0.5) / float(1 << 24)


def draw(logits: torch.Tensor, settings: SamplingSettings, seeds: torch.Tensor, position: int) -> torch.Tensor:
    """One token per row (``B``) from raw logits ``B×V``."""
    if settings.greedy:
        return logits.argmax(dim=-1)
    logits = process(logits, settings)
    gumbel = -torch.log(-torch.log(hashed_uniform(seeds, position, logits.shape[-1])))
    return (logits + gumbel).argmax(dim=-1)


def seed_rows(seed: int | None, batch_size: int, device=None) -> torch.Tensor:
    """Row seeds ``seed, seed+1, ...``; a random base when ``seed`` is None."""
    if seed is None:
        seed = int(torch.randint(0, 1 << 31, ()).item())
    check_seed("seed", seed, batch_size)
    return torch.arange(seed, seed + batch_size, device=device, dtype=torch.long)


Callback = Callable[[int, torch.Tensor], None]


@torch.no_grad()
def sample_tokens(gpt: GPT, prefix: torch.Tensor, steps: int, settings: SamplingSettings, seeds: torch.Tensor,
                  vocab_limit: int | None = None, null_prefix: torch.Tensor | None = None, first_position: int = 0,
                  callback: Callback | None = None) -> torch.Tensor:
    """Extend ``prefix`` (``B×P``: condition tokens, then any given image tokens) by ``steps`` tokens.

    Only the first ``vocab_limit`` logits are eligible (the image codebook; condition ids never come out).
    With guidance, ``null_prefix`` (the same shape, its condition replaced by null ids) runs in the same batch.
    ``first_position`` is the grid position of the first new token, which keys its noise. ``callback(k,
    tokens_so_far)`` runs after each token. Returns ``B×steps``.
    """
    B, P = prefix.shape
    if steps <= 0:
        return prefix.new_zeros(B, 0)
    if settings.guided:
        if null_prefix is None or null_prefix.shape != prefix.shape:
            raise ValueError("classifier-free guidance needs a null prefix of the prefix's shape")
        prefix = torch.cat((prefix, null_prefix))
    needed = P + steps - 1  # the last token is never fed back
    if needed > gpt.block_size:
        raise ValueError(f"sampling {steps} tokens after {P} needs {needed} positions; the model has "
                         f"block_size={gpt.block_size} (use the sliding-window sampler for larger grids)")
    rows = prefix.shape[0]
    gpt.ensure_cache(rows, needed)
    was_training = gpt.training
    gpt.eval()
    out = prefix.new_empty(B, steps)
    try:
        logits = gpt.prefill(prefix)
        for k in range(steps):
            logits = logits[:, :vocab_limit]
            if settings.guided:
                logits = guide(logits, settings.cfg_scale)
            token = draw(logits, settings, seeds, first_position + k)
            out[:, k] = token
            if callback is not None:
                callback(k, out[:, : k + 1])
            if k + 1 < steps:
                fed = torch.cat((token, token)) if settings.guided else token
                logits = gpt.decode_one(fed, P + k)
    finally:
        gpt.train(was_training)
    return out
