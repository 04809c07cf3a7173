"""The stage-2 GPT over image tokens (the original's minGPT), with a static KV cache for fast sampling.

Parameter names follow CompVis/taming-transformers exactly (``tok_emb``, ``pos_emb``, ``blocks.0.attn.query``,
``blocks.0.mlp.0``, ``head``, ...) so the original checkpoints load as they are; the original's ``attn.mask``
buffer is not stored (the mask is rebuilt from the config). Attention runs through ``scaled_dot_product_attention``.

Sampling is prefill-then-decode: :meth:`GPT.setup_cache` allocates the keys and values once (fixed shapes, so the
decode step is ``torch.compile`` friendly), :meth:`GPT.prefill` runs the prefix, and :meth:`GPT.decode_one` adds one
token at a time. The original re-ran the whole sequence for every new token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    """The original ``transformer_config.params``."""

    vocab_size: int = 1024
    block_size: int = 256
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 256
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    # The first ``n_unmasked`` positions attend to each other both ways (a bidirectional conditioning prefix).
    n_unmasked: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"gpt.{name}: must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"gpt.n_embd: {self.n_embd} is not a multiple of n_head={self.n_head}")
        for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"gpt.{name}: expected a value in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.n_unmasked <= self.block_size:
            raise ValueError(f"gpt.n_unmasked: expected 0..block_size={self.block_size}, got {self.n_unmasked}")


def attention_mask(length: int, n_unmasked: int, device=None) -> torch.Tensor | None:
    """Boolean ``length×length`` mask (True: may attend), or None where plain causal attention is the same."""
    if n_unmasked <= 1:  # one unmasked position attends only to itself anyway
        return None
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask[:n_unmasked, :n_unmasked] = True
    return mask


class KVCache(nn.Module):
    """Keys and values of one attention layer for positions ``[0, max_len)``, allocated once.

    Buffers are non-persistent: a cache is scratch space, never part of a checkpoint.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("positions", torch.arange(max_len, device=device), persistent=False)

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` (``B×nh×T×hd``) at ``input_pos`` (``T``) and return the whole cache."""
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.attn_pdrop = config.attn_pdrop
        # Separate projections (not one fused qkv) so the original checkpoints load without reshaping.
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_drop = nn.Dropout(config.resid_pdrop)
        self.kv_cache: KVCache | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, input_pos: torch.Tensor | None = None,
                decode_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Without ``input_pos``: a plain forward. With it, also write k, v to the cache at ``input_pos``; with
        ``decode_mask`` as well, attend over the cache (decode) instead of over ``x`` alone (prefill): over its first
        ``decode_mask`` positions when that is an int, else over the positions the boolean mask allows."""
        B, T, C = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if input_pos is not None:
            k_all, v_all = self.kv_cache.update(input_pos, k, v)
            if isinstance(decode_mask, int):  # eager decoding: the filled part of the cache, no mask needed
                k, v = k_all[:, :, :decode_mask].to(q.dtype), v_all[:, :, :decode_mask].to(q.dtype)
                y = F.scaled_dot_product_attention(q, k, v)
                return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
            if decode_mask is not None:
                k, v, attn_mask = k_all.to(q.dtype), v_all.to(q.dtype), decode_mask
        dropout_p = self.attn_pdrop if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: torch.Tensor, attn_mask=None, input_pos=None, decode_mask=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attn_mask, input_pos, decode_mask)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer over token indices, optionally after a prefix of continuous embeddings."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The original's init (pos_emb stays zero); matters for training from scratch, not for loaded weights.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def block_size(self) -> int:
        return self.config.block_size

    def _embed(self, idx: torch.Tensor, embeddings: torch.Tensor | None) -> torch.Tensor:
        x = self.tok_emb(idx)
        if embeddings is not None:
            x = torch.cat((embeddings.to(x.dtype), x), dim=1)
        if x.shape[1] > self.block_size:
            raise ValueError(f"GPT: sequence of {x.shape[1]} positions exceeds block_size={self.block_size}")
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(x))

    def forward(self, idx: torch.Tensor, embeddings: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``B×T×V`` for ``idx`` (``B×t``) after the optional ``embeddings`` (``B×e×C``; ``T = e + t``),
        and the cross-entropy against ``targets`` (``B×T``) when given."""
        x = self._embed(idx, embeddings)
        T = x.shape[1]
        x = self.drop(x + self.pos_emb[:, :T])
        mask = attention_mask(T, self.config.n_unmasked, x.device)
        for block in self.blocks:
            x = block(x, mask)
        logits = self._head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    # ---- KV cache ---------------------------------------------------------------------------------------------

    def setup_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> None:
        """Allocate keys and values for ``batch_size`` sequences of up to ``max_len`` positions (default
        ``block_size``); device and dtype default to the parameters'."""
        max_len = self.block_size if max_len is None else max_len
        if not 1 <= max_len <= self.block_size:
            raise ValueError(f"GPT.setup_cache: max_len={max_len} must be in 1..block_size={self.block_size}")
        device = self.pos_emb.device if device is None else device
        dtype = self.pos_emb.dtype if dtype is None else dtype
        head_dim = self.config.n_embd // self.config.n_head
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_head, max_len, head_dim, device, dtype)

    def clear_cache(self) -> None:
        """Free the cache memory."""
        for block in self.blocks:
            block.attn.kv_cache = None

    @property
    def cache(self) -> KVCache | None:
        """The first layer's cache (all layers share its shape), or None before :meth:`setup_cache`."""
        return self.blocks[0].attn.kv_cache if len(self.blocks) else None

    def _require_cache(self, batch_size: int, end: int) -> KVCache:
        cache = self.cache
        if cache is None:
            raise RuntimeError("GPT: no KV cache; call setup_cache(batch_size, max_len) first")
        if cache.batch_size != batch_size:
            raise ValueError(f"GPT: batch of {batch_size} but the KV cache holds {cache.batch_size} sequences")
        if end > cache.max_len:
            raise ValueError(f"GPT: position {end - 1} is beyond the KV cache (max_len={cache.max_len})")
        return cache

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prefix (``embeddings`` then ``idx``) at positions ``[0, T)``, fill the cache, and return the
        logits ``B×V`` of the last position."""
        x = self._embed(idx, embeddings)
        B, T, _ = x.shape
        if T < 1:
            raise ValueError("GPT.prefill: the prefix is empty")
        if T < self.config.n_unmasked:
            # Later tokens would change the outputs of the bidirectional prefix, which a cache cannot redo.
            raise ValueError(f"GPT.prefill: prefix of {T} positions is shorter than n_unmasked="
                             f"{self.config.n_unmasked}")
        self._require_cache(B, T)
        x = self.drop(x + self.pos_emb[:, :T])
        mask = attention_mask(T, self.config.n_unmasked, x.device)
        input_pos = torch.arange(T, device=x.device)
        for block in self.blocks:
            x = block(x, mask, input_pos)
        return self._head(x[:, -1])

    @torch.no_grad()
    def decode_one(self, token: torch.Tensor, pos: int | torch.Tensor) -> torch.Tensor:
        """Add ``token`` (``B`` or ``B×1``) at position ``pos`` (after a prefill of at least ``pos`` positions)
        and return its logits ``B×V``.

        Fixed shapes throughout: with ``pos`` as a 0-d long tensor on the cache's device this step compiles once
        with ``torch.compile``. An int ``pos`` is bounds-checked here; a tensor one is not (that would sync).
        """
        token = token.reshape(-1, 1)
        if isinstance(pos, int):
            if pos < 0:
                raise ValueError(f"GPT.decode_one: negative position {pos}")
            cache = self._require_cache(token.shape[0], pos + 1)
            decode_mask = pos + 1  # a known length: attend over the filled part of the cache only
            pos = torch.tensor(pos, device=cache.k.device)
        else:
            cache = self._require_cache(token.shape[0], 0)
            decode_mask = (cache.positions <= pos).view(1, 1, 1, -1)  # fixed shape, for torch.compile
        input_pos = pos.reshape(1)
        x = self.drop(self.tok_emb(token) + self.pos_emb.index_select(1, input_pos))
        for block in self.blocks:
            x = block(x, None, input_pos, decode_mask)
        return self._head(x[:, -1])


# ---- sampling ---------------------------------------------------------------------------------------------------


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


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token ``B×1`` from logits ``B×V``; ``top_k=1`` is greedy (argmax, no randomness)."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k: expected a positive integer or None, got {top_k}")
    if top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature} (use top_k=1 for greedy)")
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(gpt: GPT, prefix_idx: torch.Tensor, steps: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Extend ``prefix_idx`` (``B×t``, after optional ``embeddings``) by ``steps`` tokens with the KV cache and
    return the full sequence ``B×(t+steps)``.

    The whole sequence must fit in ``block_size`` (sampling past it needs a sliding window, which lives
    elsewhere). An existing cache that is large enough is reused (so a compiled decode step stays valid);
    otherwise one is allocated and left on ``gpt`` (free it with :meth:`GPT.clear_cache`).
    """
    if steps <= 0:
        return prefix_idx.clone()
    B, t = prefix_idx.shape
    offset = 0 if embeddings is None else embeddings.shape[1]
    needed = offset + t + steps - 1  # the last sampled token is never fed back
    if needed > gpt.block_size:
        raise ValueError(f"generate: {offset + t} prefix positions + {steps} steps need {needed} positions, "
                         f"more than block_size={gpt.block_size}")
    cache = gpt.cache
    if (cache is None or cache.batch_size != B or cache.max_len < needed
            or cache.k.device != gpt.pos_emb.device):
        gpt.setup_cache(B, needed)
    was_training = gpt.training
    gpt.eval()
    try:
        token = sample_next(gpt.prefill(prefix_idx, embeddings), temperature, top_k, top_p, generator)
        tokens = [prefix_idx, token]
        for i in range(1, steps):
            logits = gpt.decode_one(token, offset + t + i - 1)
            token = sample_next(logits, temperature, top_k, top_p, generator)
            tokens.append(token)
    finally:
        gpt.train(was_training)
    return torch.cat(tokens, dim=1)
