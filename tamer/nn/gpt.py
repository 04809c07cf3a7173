"""The stage-2 GPT over image tokens (the original's minGPT), with a static KV cache for fast sampling.

Parameter names follow CompVis/taming-transformers exactly (``tok_emb``, ``pos_emb``, ``blocks.0.attn.query``,
``blocks.0.mlp.0``, ``head``, ...) so the original checkpoints load as they are; the original's ``attn.mask``
buffer is not stored (the mask is rebuilt from the config). Attention runs through ``scaled_dot_product_attention``.

Sampling is prefill-then-decode: :meth:`GPT.setup_cache` allocates the keys and values once, :meth:`GPT.prefill`
runs the prefix, and :meth:`GPT.decode_one` adds one token at a time. :meth:`GPT.extend` adds a chunk of tokens on
top of a cache, the GPT's own or one the caller keeps (the sliding-window sampler keeps one per window); prefill,
extend and the eager decode step are the same code (:meth:`Block.cached`). The original re-ran the whole sequence
for every new token.

Speed on the CPU: a decode step multiplies a few rows (the batch) by every weight matrix, so it is bound by how fast
the weights stream from memory. :func:`linear` picks the form of that product that streams fastest on the CPU at
hand, and :func:`weights_held_in` holds bf16 weights packed for oneDNN where bf16 is fast (BENCHMARKS.md has the
figures). Compiling the decode step was measured not to pay on the CPU, so there is one eager path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tamer.config import checked_keywords
from tamer.devices import cpu_vendor


@checked_keywords
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


# `linear` computes (W @ x^T)^T for up to SMALL_ROWS rows of float32 on the CPU and weights of SMALL_WEIGHT or more
# elements (1 MiB: a 512×512 matrix), on CPUs where that form pays (TRANSPOSED_FORM); otherwise F.linear.
SMALL_ROWS = 32
SMALL_WEIGHT = 1 << 18


# MKL's few-row F.linear is slow on AMD CPUs, where the transposed form streams the weights twice as fast; on an
# Intel Xeon (AMX, 2 threads) it is the other way round: a 12×512 decode step took 16.7 ms with F.linear and
# 21.8 ms in the transposed form. So the form is taken on AMD only (BENCHMARKS.md, GPT sampling).
TRANSPOSED_FORM = cpu_vendor() == "AuthenticAMD"


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``; for few rows of float32 on an AMD CPU and a large weight computed as ``(W @ x^T)^T``.

    The same products summed in another order (float noise). Why: at few rows the product is bound by reading
    ``W`` from memory, and MKL streams ``W`` much faster in this form on AMD CPUs (not on Intel ones:
    :data:`TRANSPOSED_FORM`); BENCHMARKS.md, "GPT sampling with the KV cache", has the figures and what was tried and
    dropped. At 1 row both forms are a matrix-vector product and from :data:`SMALL_ROWS` rows on the gain is small;
    a weight small enough to stay in the caches (:data:`SMALL_WEIGHT`) only pays the extra call. ``x`` is made
    contiguous first (from a row-major ``x^T`` MKL is three times slower); the result is a transposed view. Module
    hooks on ``layer`` do not run on this path. A layer whose bf16 weight :func:`weights_held_in` packed runs
    through oneDNN's packed product instead.
    """
    w = layer.weight
    rows = x.numel() // x.shape[-1]
    if rows > SMALL_ROWS or w.numel() < SMALL_WEIGHT or not x.is_cpu:
        return layer(x)
    packed = getattr(layer, "packed_weight", None)  # bf16 weights packed for oneDNN by weights_held_in
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x.to(w.dtype), packed, layer.bias, "none", [], "")
    if not TRANSPOSED_FORM or x.dtype is not torch.float32:
        return layer(x)
    flat = x.reshape(rows, x.shape[-1]).contiguous()
    b = layer.bias
    out = torch.mm(w, flat.t()) if b is None else torch.addmm(b.unsqueeze(1), w, flat.t())
    return out.t().view(*x.shape[:-1], w.shape[0])


def _can_pack_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                    and torch.ops.mkldnn._reorder_linear_weight is not None)
    except (AttributeError, RuntimeError):  # a torch without these oneDNN ops: plain F.linear
        return False


@contextlib.contextmanager
def weights_held_in(gpt: nn.Module, dtype: torch.dtype | None):
    """Hold ``gpt``'s floating-point parameters in ``dtype`` (bf16, fp16; None or fp32: as they are) while the block
    runs; the originals are put back after, untouched. Weights changed inside the block are not kept.

    For sampling: a decode step is bound by reading the weights, so weights stored in bf16 (half the bytes) run it
    faster than autocast, which re-casts fp32 weights at every step. On the CPU the large bf16 weights are also packed
    for oneDNN (as inductor's freezing does), whose packed few-row product is faster than ``F.linear``'s: a 12×512
    GPT's 72 products at 4 rows took 5.5 instead of 7.9 ms (Intel Xeon with AMX, 2 threads, the same results);
    in fp32 packing gained nothing (8.9 against 9.1 ms). Each attention layer's query, key and value weights are
    also packed as one matrix (``packed_qkv``), one product instead of three: 256 tokens at batch 4 in 1.94 instead
    of 2.08 s, the same tokens. Whole samplings: BENCHMARKS.md, GPT sampling.

    Nested use is cheap: parameters already in ``dtype`` and layers already packed are left as they are (a loop
    over batches holds the weights once around it, and a per-batch call inside costs nothing).
    """
    if dtype is None or dtype is torch.float32:
        yield gpt
        return
    params = [p for p in gpt.parameters() if p.is_floating_point() and p.dtype != dtype]
    originals = [p.data for p in params]
    packed: list[tuple[nn.Module, str]] = []
    try:
        for p in params:
            p.data = p.data.to(dtype)
        if dtype is torch.bfloat16 and _can_pack_bf16():
            pack = torch.ops.mkldnn._reorder_linear_weight
            for module in gpt.modules():
                if (isinstance(module, nn.Linear) and module.weight.is_cpu and module.weight.numel() >= SMALL_WEIGHT
                        and not hasattr(module, "packed_weight")):
                    module.packed_weight = pack(module.weight, None)
                    packed.append((module, "packed_weight"))
            for module in gpt.modules():
                if (isinstance(module, CausalSelfAttention) and hasattr(module.query, "packed_weight")
                        and module.query.bias is not None and not hasattr(module, "packed_qkv")):
                    parts = (module.query, module.key, module.value)
                    module.packed_qkv = (pack(torch.cat([part.weight for part in parts]), None),
                                         torch.cat([part.bias for part in parts]))
                    packed.append((module, "packed_qkv"))
        yield gpt
    finally:
        for module, name in packed:
            delattr(module, name)
        for p, original in zip(params, originals):
            p.data = original


class KVCache(nn.Module):
    """Keys and values of one attention layer for positions ``[0, max_len)``, allocated once.

    Buffers are non-persistent: a cache is scratch space, never part of a checkpoint.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


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

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Queries contiguous: from the transposed view of `linear`, SDPA on the CPU leaves its flash kernel for the
        # math one, which also scales the whole key cache (decode step of the 12×512 model at ~125 cached
        # positions, batch 4: 532 instead of 316 µs a layer).
        packed = getattr(self, "packed_qkv", None)  # set by weights_held_in: one product for all three
        if packed is not None and x.is_cpu and x.numel() // x.shape[-1] <= SMALL_ROWS:
            weight, bias = packed
            qkv = torch.ops.mkldnn._linear_pointwise(x.to(bias.dtype), weight, bias, "none", [], "")
            q, k, v = qkv.split(x.shape[-1], dim=-1)
            return self._heads(q.contiguous()), self._heads(k), self._heads(v)
        q = linear(x, self.query).contiguous()
        return self._heads(q), self._heads(linear(x, self.key)), self._heads(linear(x, self.value))

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, hd = y.shape
        return self.resid_drop(linear(y.transpose(1, 2).reshape(B, T, self.n_head * hd), self.proj))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention within ``x`` (``B×T×C``): causal, or as the boolean ``attn_mask`` allows."""
        q, k, v = self._qkv(x)
        dropout_p = self.attn_pdrop if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                           is_causal=attn_mask is None)
        return self._out(y)

    def cached(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int,
               attn_mask: torch.Tensor | None = None, is_causal: bool = False, queries: str = "all"):
        """``x`` (``B×T×C``) at positions ``start .. start+T-1``: write its keys and values into ``k_cache``,
        ``v_cache`` (``B×nh×max_len×hd``) and attend over the cached positions ``< start+T`` (``attn_mask``: the
        chunk's rows of the full mask, or ``is_causal`` when ``start`` is 0). ``queries``: "all" positions,
        only the "last" one (``B×1×C``), or "none" (only store keys and values; returns None)."""
        y = self._attend_cached(*self._qkv(x), k_cache, v_cache, start, attn_mask, is_causal, queries)
        return None if y is None else self._out(y)

    def cached_chunks(self, x: torch.Tensor, chunks: list, queries: str = "all") -> torch.Tensor:
        """:meth:`cached` for several chunks, each on its own cache, in one pass: ``x`` (``P×C``) holds every
        chunk's positions one after another (chunk ``c``: ``N×T``, row-major); ``chunks`` holds per chunk ``(N, T,
        k_cache, v_cache, start, attn_mask, is_causal)``. The projections run over all ``P`` positions at once (the
        weights are read once), attention per chunk. Returns ``P×C``, or for ``queries="last"`` the last position
        of each of the ``ΣN`` sequences."""
        q = linear(x, self.query).contiguous()
        k, v = linear(x, self.key), linear(x, self.value)
        ys, first = [], 0
        for n, t, k_cache, v_cache, start, attn_mask, is_causal in chunks:
            rows = slice(first, first + n * t)
            first += n * t
            q_c, k_c, v_c = (self._heads(z[rows].reshape(n, t, -1)) for z in (q, k, v))
            y = self._attend_cached(q_c, k_c, v_c, k_cache, v_cache, start, attn_mask, is_causal, queries)
            ys.append(y.transpose(1, 2).reshape(-1, x.shape[-1]))
        return self.resid_drop(linear(torch.cat(ys), self.proj))

    @staticmethod
    def _attend_cached(q, k, v, k_cache, v_cache, start, attn_mask, is_causal, queries) -> torch.Tensor | None:
        """Heads ``q, k, v`` (``B×nh×T×hd``) at positions ``start ..``: store ``k, v`` in the cache, attend over
        it (see :meth:`cached`); heads ``B×nh×T×hd`` (``T=1`` for "last"), None for "none"."""
        end = start + k.shape[2]
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = v
        if queries == "none":
            return None
        if queries == "last" and q.shape[2] > 1:  # the last position attends to all keys up to itself
            q, attn_mask, is_causal = q[:, :, -1:], None, False
        keys, values = k_cache[:, :, :end].to(q.dtype), v_cache[:, :, :end].to(q.dtype)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask, is_causal=is_causal)


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

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """``self.mlp(x)``, through :func:`linear`."""
        fc1, act, fc2, drop = self.mlp
        return drop(linear(act(linear(x, fc1)), fc2))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attn_mask)
        return x + self._mlp(self.ln2(x))

    def cached(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int,
               attn_mask: torch.Tensor | None = None, is_causal: bool = False, queries: str = "all"):
        """The block over a KV cache; see :meth:`CausalSelfAttention.cached`."""
        y = self.attn.cached(self.ln1(x), k_cache, v_cache, start, attn_mask, is_causal, queries)
        if y is None:
            return None
        x = x[:, -1:] + y if queries == "last" else x + y
        return x + self._mlp(self.ln2(x))

    def cached_chunks(self, x: torch.Tensor, chunks: list, queries: str, last: torch.Tensor) -> torch.Tensor:
        """The block over several chunks' caches; see :meth:`CausalSelfAttention.cached_chunks`. ``last``: the
        rows of ``x`` that are the sequences' last positions (kept for ``queries="last"``)."""
        y = self.attn.cached_chunks(self.ln1(x), chunks, queries)
        x = x[last] + y if queries == "last" else x + y
        return x + self._mlp(self.ln2(x))


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
        return linear(self.ln_f(x), self.head)

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

    def ensure_cache(self, batch_size: int, max_len: int) -> None:
        """Keep the cache when it holds ``batch_size`` sequences of ``max_len`` positions on the parameters' device
        and dtype, else allocate a new one. The dtype matters: after sampling
        with weights held in bf16 (:func:`weights_held_in`) a bf16 cache would round fp32 keys."""
        cache = self.cache
        if (cache is None or cache.batch_size != batch_size or cache.max_len < max_len
                or cache.k.device != self.pos_emb.device or cache.k.dtype != self.pos_emb.dtype):
            self.setup_cache(batch_size, max_len)

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
        self._check_cache(cache.k, batch_size, end)
        return cache

    @staticmethod
    def _check_cache(k: torch.Tensor, batch_size: int, end: int) -> None:
        """``k``: one layer's keys, ``batch×nh×max_len×hd``."""
        if k.shape[0] != batch_size:
            raise ValueError(f"GPT: batch of {batch_size} but the KV cache holds {k.shape[0]} sequences")
        if end > k.shape[2]:
            raise ValueError(f"GPT: position {end - 1} is beyond the KV cache (max_len={k.shape[2]})")

    def _own_caches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return [(block.attn.kv_cache.k, block.attn.kv_cache.v) for block in self.blocks]

    def _chunk_mask(self, start: int, end: int, device) -> tuple[torch.Tensor | None, bool]:
        """Rows ``start .. end-1`` of the full ``end×end`` attention mask, as SDPA's ``(attn_mask, is_causal)``."""
        n_unmasked = self.config.n_unmasked
        if start > 0 and start < n_unmasked and n_unmasked > 1:
            # Earlier positions would have to see these ones (a bidirectional prefix), which a cache cannot redo.
            raise ValueError(f"GPT: positions from {start} on are inside the bidirectional prefix "
                             f"(n_unmasked={n_unmasked}); run the whole prefix in one call")
        if end - start == 1:  # one position (after any bidirectional prefix): it attends to all up to itself
            return None, False
        if start == 0 and n_unmasked <= 1:
            return None, True
        full = attention_mask(end, n_unmasked, device)
        if full is None:
            full = torch.ones(end, end, dtype=torch.bool, device=device).tril()
        return full[start:], False

    def _run(self, x: torch.Tensor, start: int, caches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             logits: bool = True) -> torch.Tensor | None:
        """Embeddings ``x`` (``B×T×C``) at positions ``start ..`` through every block over ``caches`` (one
        ``(keys, values)`` per layer); the logits ``B×V`` of the last position, or None with ``logits=False``."""
        end = start + x.shape[1]
        x = self.drop(x + self.pos_emb[:, start:end])
        mask, is_causal = self._chunk_mask(start, end, x.device)
        last = len(self.blocks) - 1
        for layer, (block, (k_cache, v_cache)) in enumerate(zip(self.blocks, caches)):
            # Past its keys and values, the last layer is needed only for the last position's logits.
            queries = ("last" if logits else "none") if layer == last else "all"
            x = block.cached(x, k_cache, v_cache, start, mask, is_causal, queries)
        return None if x is None else self._head(x[:, -1])

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
        return self._run(x, 0, self._own_caches())

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, start: int, k_cache=None, v_cache=None,
               logits: bool = True) -> torch.Tensor | None:
        """Run ``tokens`` (``N×T``) at positions ``start .. start+T-1`` on top of the cached positions ``< start``,
        store their keys and values, and return the logits ``N×V`` of the last one (None with ``logits=False``,
        which also skips the last layer's attention and MLP).

        The cache is the GPT's own (:meth:`setup_cache`) unless ``k_cache`` and ``v_cache`` are given: per layer,
        ``N×n_head×max_len×head_dim`` keys and values (a list, or one ``n_layer×N×...`` tensor). Positions from
        ``start`` on are overwritten; a chunk starting inside a bidirectional prefix (``n_unmasked``) must start at 0
        and cover it.
        """
        return self._run(self.tok_emb(tokens), start, self._extend_caches(tokens, start, k_cache, v_cache), logits)

    @torch.no_grad()
    def extend_chunks(self, chunks: list) -> torch.Tensor:
        """Several :meth:`extend` calls in one pass, each on its own cache: ``chunks`` holds ``(tokens, start,
        k_cache, v_cache)`` per call, as :meth:`extend` takes them (rows, lengths and starts may differ). Returns
        the logits of each chunk's last position, ``ΣN×V`` in chunk order.

        Why: on the CPU a call of few positions is bound by reading the weights; here the linear layers run all
        chunks' positions in one product, so the weights are read once per layer for all of them. Attention runs
        per chunk over its own cache.
        """
        if not chunks:
            raise ValueError("GPT.extend_chunks: no chunks")
        xs, specs, last, first = [], [], [], 0
        for tokens, start, k_cache, v_cache in chunks:
            caches = list(self._extend_caches(tokens, start, k_cache, v_cache))
            n, t = tokens.shape
            xs.append((self.tok_emb(tokens) + self.pos_emb[:, start:start + t]).reshape(n * t, -1))
            specs.append((n, t, caches, start, *self._chunk_mask(start, start + t, tokens.device)))
            last.append(torch.arange(n, device=tokens.device) * t + (first + t - 1))
            first += n * t
        x, last = self.drop(torch.cat(xs)), torch.cat(last)
        final = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            layer_chunks = [(n, t, *caches[layer], start, mask, causal) for n, t, caches, start, mask, causal in specs]
            x = block.cached_chunks(x, layer_chunks, "last" if layer == final else "all", last)
        return self._head(x)

    def _extend_caches(self, tokens: torch.Tensor, start: int, k_cache, v_cache):
        """Check an :meth:`extend` call and return its ``(keys, values)`` per layer."""
        N, T = tokens.shape
        end = start + T
        if T < 1 or start < 0:
            raise ValueError(f"GPT.extend: expected at least one token at a position >= 0, got {T} at {start}")
        if end > self.block_size:
            raise ValueError(f"GPT: sequence of {end} positions exceeds block_size={self.block_size}")
        if start == 0 and end < self.config.n_unmasked:
            raise ValueError(f"GPT.extend: {T} positions from 0 are fewer than n_unmasked={self.config.n_unmasked}")
        if k_cache is None:
            self._require_cache(N, end)
            return self._own_caches()
        if len(k_cache) != len(self.blocks) or len(v_cache) != len(self.blocks):
            raise ValueError(f"GPT.extend: expected keys and values of {len(self.blocks)} layers")
        self._check_cache(k_cache[0], N, end)
        return zip(k_cache, v_cache)

    @torch.no_grad()
    def decode_one(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Add ``token`` (``B`` or ``B×1``) at position ``pos`` (after a prefill of at least ``pos`` positions)
        and return its logits ``B×V``: :meth:`extend` for one token."""
        token = token.reshape(-1, 1)
        if pos < 0:
            raise ValueError(f"GPT.decode_one: negative position {pos}")
        self._require_cache(token.shape[0], pos + 1)
        return self._run(self.tok_emb(token), pos, self._own_caches())
