"""Same weights in, same numbers out: tamer's GPT (and its KV cache) against the original minGPT."""

import pytest
import torch
from taming.modules.transformer import mingpt  # needs the `transformers` stub of conftest.py

import tamer.nn.gpt as gpt_module
from tamer.ar.sampling import SamplingSettings, draw, sample_tokens, seed_rows, top_k_filter, top_p_filter
from tamer.nn.gpt import GPT, GPTConfig

SMALL = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_pair(n_unmasked: int = 0) -> tuple[GPT, mingpt.GPT]:
    """Our GPT with weights spread out (distinct logits, so greedy choices have no near-ties) and the original
    holding the same weights."""
    ours = GPT(GPTConfig(**SMALL, n_unmasked=n_unmasked)).eval()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name == "pos_emb" else 0.1))
    theirs = mingpt.GPT(**SMALL, n_unmasked=n_unmasked).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected
    assert missing == [f"blocks.{i}.attn.mask" for i in range(SMALL["n_layer"])]
    return ours, theirs


def test_state_dict_keys_match_original_without_mask():
    ours = GPT(GPTConfig(**SMALL))
    theirs = mingpt.GPT(**SMALL)
    expected = {k for k in theirs.state_dict() if not k.endswith("attn.mask")}
    assert set(ours.state_dict()) == expected
    assert ours.pos_emb.shape == (1, SMALL["block_size"], SMALL["n_embd"])
    assert ours.head.bias is None
    ours.setup_cache(2)  # the cache is scratch, never in a checkpoint
    assert set(ours.state_dict()) == expected


def test_init_matches_original_statistics():
    ours = GPT(GPTConfig(**SMALL))
    assert torch.all(ours.pos_emb == 0)
    assert torch.all(ours.blocks[0].ln1.weight == 1) and torch.all(ours.blocks[0].ln1.bias == 0)
    assert torch.all(ours.blocks[1].attn.key.bias == 0)
    assert abs(ours.tok_emb.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("n_unmasked", [0, 5])
@pytest.mark.parametrize("with_embeddings", [False, True], ids=["tokens", "embeddings"])
def test_forward_matches_original(n_unmasked, with_embeddings):
    ours, theirs = make_pair(n_unmasked)
    idx = torch.randint(0, SMALL["vocab_size"], (3, 20))
    emb = torch.randn(3, 4, SMALL["n_embd"]) if with_embeddings else None
    T = idx.shape[1] + (0 if emb is None else emb.shape[1])
    targets = torch.randint(0, SMALL["vocab_size"], (3, T))
    with torch.no_grad():
        logits, loss = ours(idx, embeddings=emb, targets=targets)
        ref_logits, ref_loss = theirs(idx, embeddings=emb, targets=targets)
    assert logits.shape == (3, T, SMALL["vocab_size"])
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert ours(idx, embeddings=emb)[1] is None


def test_n_unmasked_prefix_really_is_bidirectional():
    ours, _ = make_pair(n_unmasked=5)
    idx = torch.randint(0, SMALL["vocab_size"], (1, 10))
    changed = idx.clone()
    changed[0, 3] = (idx[0, 3] + 1) % SMALL["vocab_size"]
    with torch.no_grad():
        a, b = ours(idx)[0], ours(changed)[0]
    assert not torch.allclose(a[0, 0], b[0, 0])  # position 0 sees position 3 inside the prefix
    causal = make_pair(n_unmasked=0)[0]
    with torch.no_grad():
        torch.testing.assert_close(causal(idx)[0][0, :3], causal(changed)[0][0, :3])


def test_too_long_sequence_is_an_error():
    ours = GPT(GPTConfig(**SMALL))
    with pytest.raises(ValueError, match="block_size"):
        ours(torch.zeros(1, SMALL["block_size"] + 1, dtype=torch.long))


@pytest.mark.parametrize("n_unmasked", [0, 5])
@pytest.mark.parametrize("with_embeddings", [False, True], ids=["tokens", "embeddings"])
def test_cached_decoding_equals_full_forward(n_unmasked, with_embeddings):
    ours, _ = make_pair(n_unmasked)
    B, prefix, total = 2, 6, 24
    idx = torch.randint(0, SMALL["vocab_size"], (B, total))
    emb = torch.randn(B, 3, SMALL["n_embd"]) if with_embeddings else None
    e = 0 if emb is None else emb.shape[1]
    with torch.no_grad():
        full = ours(idx, embeddings=emb)[0]
    ours.setup_cache(B, max_len=SMALL["block_size"])
    step_logits = [ours.prefill(idx[:, :prefix], embeddings=emb)]
    for t in range(prefix, total):
        step_logits.append(ours.decode_one(idx[:, t], e + t))
    cached = torch.stack(step_logits, dim=1)
    torch.testing.assert_close(cached, full[:, e + prefix - 1:], atol=1e-4, rtol=1e-4)


def test_cache_errors_are_clear():
    ours = GPT(GPTConfig(**SMALL, n_unmasked=5)).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 8))
    with pytest.raises(RuntimeError, match="setup_cache"):
        ours.prefill(idx)
    with pytest.raises(ValueError, match="max_len"):
        ours.setup_cache(2, max_len=SMALL["block_size"] + 1)
    ours.setup_cache(2, max_len=10)
    with pytest.raises(ValueError, match="n_unmasked"):
        ours.prefill(idx[:, :3])
    with pytest.raises(ValueError, match="beyond the KV cache"):
        ours.prefill(torch.randint(0, SMALL["vocab_size"], (2, 11)))
    ours.prefill(idx)
    ours.decode_one(idx[:, 0], 9)
    with pytest.raises(ValueError, match="beyond the KV cache"):
        ours.decode_one(idx[:, 0], 10)
    with pytest.raises(ValueError, match="batch"):
        ours.decode_one(idx[:1, 0], 8)
    ours.clear_cache()
    assert ours.cache is None


@pytest.mark.parametrize("n_unmasked", [0, 5])
@pytest.mark.parametrize("fast", [False, True], ids=["f_linear", "fast"])
def test_greedy_generation_matches_original_samplers(n_unmasked, fast, monkeypatch):
    if fast:  # the (W @ x^T)^T products that large weights take, on these small ones
        monkeypatch.setattr(gpt_module, "SMALL_WEIGHT", 0)
        monkeypatch.setattr(gpt_module, "TRANSPOSED_FORM", True)
    ours, theirs = make_pair(n_unmasked)
    prefix = torch.randint(0, SMALL["vocab_size"], (3, 6))
    steps = SMALL["block_size"] - prefix.shape[1]  # fill the whole block
    new = sample_tokens(ours, prefix, steps, SamplingSettings(top_k=1), seed_rows(0, 3))
    assert new.shape == (3, steps)
    ref = mingpt.sample(theirs, prefix, steps, temperature=1.0, sample=False)
    assert torch.equal(torch.cat([prefix, new], 1), ref)
    ref_past = mingpt.sample_with_past(prefix, theirs, steps, sample_logits=False)  # returns new tokens only
    assert torch.equal(new, ref_past)


def test_sampling_rejects_too_many_steps():
    ours, _ = make_pair()
    with pytest.raises(ValueError, match="block_size"):
        sample_tokens(ours, torch.zeros(1, 6, dtype=torch.long), SMALL["block_size"] - 4, SamplingSettings(top_k=1),
                      seed_rows(0, 1))


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, -2.0, 4.0, 0.0]])
    out = top_k_filter(logits, 3)
    kept = torch.isfinite(out)
    assert kept.tolist() == [[False, True, True, False, True, False]]
    assert torch.equal(out[kept], logits[kept])
    assert torch.equal(top_k_filter(logits, 100), logits)  # k beyond the vocabulary keeps all


def test_top_p_filter_keeps_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    logits = probs.log()
    # sorted: 0.5, 0.3, 0.15, 0.05; the 0.3 crosses 0.6 and is kept, nothing after it.
    assert torch.isfinite(top_p_filter(logits, 0.6)).tolist() == [[False, True, True, False]]
    assert torch.isfinite(top_p_filter(logits, 0.85)).tolist() == [[False, True, True, True]]
    assert torch.isfinite(top_p_filter(logits, 0.0)).tolist() == [[False, True, False, False]]  # at least one
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()
    # Row-wise with batches: each row keeps its own nucleus.
    two = torch.stack([logits[0], logits[0].flip(-1)])
    assert torch.isfinite(top_p_filter(two, 0.6)).tolist() == [[False, True, True, False], [False, True, True, False]]


def test_sampling_respects_filters_and_is_reproducible():
    logits = torch.tensor([[1.0, 5.0, 3.0, -2.0, 4.0, 0.0]]).repeat(500, 1)
    picks = draw(logits, SamplingSettings(temperature=2.0, top_k=2), seed_rows(0, 500), position=0)
    assert set(picks.tolist()) == {1, 4}
    assert torch.equal(draw(logits, SamplingSettings(top_k=1), seed_rows(0, 500), 0), torch.full((500,), 1))

    ours, _ = make_pair()
    prefix = torch.randint(0, SMALL["vocab_size"], (2, 4))
    settings = SamplingSettings(temperature=1.5, top_k=20, top_p=0.9)
    a = sample_tokens(ours, prefix, 12, settings, seed_rows(7, 2))
    b = sample_tokens(ours, prefix, 12, settings, seed_rows(7, 2))
    c = sample_tokens(ours, prefix, 12, SamplingSettings(temperature=1.5), seed_rows(8, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---- the fast CPU path of few-row products, GPT.extend ------------------------------------------------------------


@pytest.fixture
def fast_path(monkeypatch):
    """Take the (W @ x^T)^T path of `linear` for the small test weights too (normally only weights of 1 MiB on)."""
    monkeypatch.setattr(gpt_module, "SMALL_WEIGHT", 0)
    monkeypatch.setattr(gpt_module, "TRANSPOSED_FORM", True)


def test_fast_linear_is_taken_and_equals_f_linear(fast_path):
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(3, 2, 64)
    with torch.no_grad():
        out = gpt_module.linear(x, layer)
        assert not out.is_contiguous()  # the transposed view of W @ x^T: the fast path ran
        torch.testing.assert_close(out, layer(x), atol=1e-6, rtol=1e-5)
        no_bias = torch.nn.Linear(64, 48, bias=False)
        torch.testing.assert_close(gpt_module.linear(x.transpose(0, 1), no_bias), no_bias(x.transpose(0, 1)),
                                   atol=1e-6, rtol=1e-5)
        many = torch.randn(gpt_module.SMALL_ROWS + 1, 64)
        assert gpt_module.linear(many, layer).is_contiguous()  # more rows: F.linear


@pytest.mark.parametrize("n_unmasked", [0, 5])
def test_fast_decode_path_equals_plain_forward(fast_path, n_unmasked):
    ours, _ = make_pair(n_unmasked)
    B, prefix, total = 2, 6, 20
    idx = torch.randint(0, SMALL["vocab_size"], (B, total))
    with torch.no_grad():
        full = ours(idx)[0]
    ours.setup_cache(B, max_len=total)
    steps = [ours.prefill(idx[:, :prefix])]
    steps += [ours.decode_one(idx[:, t], t) for t in range(prefix, total)]
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prefix - 1:], atol=1e-4, rtol=1e-4)


def test_weights_changed_after_setup_are_used(fast_path):
    ours, _ = make_pair()
    other, _ = make_pair()
    idx = torch.randint(0, SMALL["vocab_size"], (2, 10))
    ours.setup_cache(2, max_len=10)
    ours.prefill(idx[:, :5])
    ours.decode_one(idx[:, 5], 5)
    ours.load_state_dict(other.state_dict())  # in place, after the cache and a few steps
    with torch.no_grad():
        ours.blocks[0].mlp[2].weight.mul_(1.5)
        other.blocks[0].mlp[2].weight.mul_(1.5)
        expected = other(idx)[0]
    steps = [ours.prefill(idx[:, :5])] + [ours.decode_one(idx[:, t], t) for t in range(5, 10)]
    torch.testing.assert_close(torch.stack(steps, dim=1), expected[:, 4:], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_unmasked", [0, 5])
@pytest.mark.parametrize("fast", [False, True], ids=["f_linear", "fast"])
def test_extend_on_outside_caches_equals_full_forward(n_unmasked, fast, monkeypatch):
    if fast:
        monkeypatch.setattr(gpt_module, "SMALL_WEIGHT", 0)
        monkeypatch.setattr(gpt_module, "TRANSPOSED_FORM", True)
    ours, _ = make_pair(n_unmasked)
    N, total = 3, 24
    idx = torch.randint(0, SMALL["vocab_size"], (N, total))
    with torch.no_grad():
        full = ours(idx)[0]
    shape = (SMALL["n_layer"], N, SMALL["n_head"], total, SMALL["n_embd"] // SMALL["n_head"])
    k, v = torch.zeros(shape), torch.zeros(shape)
    # Chunks of 7 (keys only), 1, 4, 1, 11 positions; the own cache is never touched.
    assert ours.extend(idx[:, :7], 0, k, v, logits=False) is None
    logits = {}
    for start, end in ((7, 8), (8, 12), (12, 13), (13, 24)):
        logits[end] = ours.extend(idx[:, start:end], start, k, v)
    for end, got in logits.items():
        torch.testing.assert_close(got, full[:, end - 1], atol=1e-4, rtol=1e-4)
    assert ours.cache is None
    # A list of per-layer tensors works too, and so does the own cache.
    again = ours.extend(idx, 0, list(k), list(v))
    torch.testing.assert_close(again, full[:, -1], atol=1e-4, rtol=1e-4)
    ours.setup_cache(N, total)
    torch.testing.assert_close(ours.extend(idx[:, :10], 0), full[:, 9], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.extend(idx[:, 10:12], 10), full[:, 11], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_unmasked", [0, 5])
@pytest.mark.parametrize("fast", [False, True], ids=["f_linear", "fast"])
def test_extend_chunks_equals_one_extend_per_chunk(n_unmasked, fast, monkeypatch):
    """Chunks of different rows, lengths and starts on their own caches, in one call: each chunk's logits and
    cache as if it had run alone, and the logits of the full forward."""
    if fast:
        monkeypatch.setattr(gpt_module, "SMALL_WEIGHT", 0)
    ours, _ = make_pair(n_unmasked)
    total = 24
    seqs = [torch.randint(0, SMALL["vocab_size"], (n, total)) for n in (2, 1, 3)]
    with torch.no_grad():
        full = [ours(idx)[0] for idx in seqs]

    def caches(n):
        shape = (SMALL["n_layer"], n, SMALL["n_head"], total, SMALL["n_embd"] // SMALL["n_head"])
        return torch.zeros(shape), torch.zeros(shape)

    mine, alone = [caches(idx.shape[0]) for idx in seqs], [caches(idx.shape[0]) for idx in seqs]
    # Calls of chunks (start, end) per sequence: a fresh one, one of a single position, one beside a longer one.
    for spans in (((0, 7), (0, 9), (0, 5)), ((7, 8), (9, 20), (5, 6)), ((8, 24), (20, 21), (6, 10))):
        chunks = [(idx[:, a:b], a, *kv) for idx, (a, b), kv in zip(seqs, spans, mine)]
        got = ours.extend_chunks(chunks).split([idx.shape[0] for idx in seqs])
        for idx, (a, b), kv, logits, expected in zip(seqs, spans, alone, got, full):
            torch.testing.assert_close(logits, ours.extend(idx[:, a:b], a, *kv), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits, expected[:, b - 1], atol=1e-4, rtol=1e-4)
    for (k, v), (k_alone, v_alone) in zip(mine, alone):
        torch.testing.assert_close(k, k_alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v_alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no chunks"):
        ours.extend_chunks([])
    if n_unmasked:
        with pytest.raises(ValueError, match="bidirectional prefix"):
            ours.extend_chunks([(seqs[0][:, 2:4], 2, *mine[0])])


def test_extend_errors_are_clear():
    ours, _ = make_pair(n_unmasked=5)
    shape = (SMALL["n_layer"], 2, SMALL["n_head"], 12, SMALL["n_embd"] // SMALL["n_head"])
    k, v = torch.zeros(shape), torch.zeros(shape)
    idx = torch.randint(0, SMALL["vocab_size"], (2, 12))
    with pytest.raises(ValueError, match="n_unmasked"):
        ours.extend(idx[:, :3], 0, k, v)  # the bidirectional prefix needs all its positions at once
    ours.extend(idx[:, :6], 0, k, v)
    with pytest.raises(ValueError, match="bidirectional prefix"):
        ours.extend(idx[:, 3:6], 3, k, v)
    with pytest.raises(ValueError, match="beyond the KV cache"):
        ours.extend(idx[:, :2], 11, k, v)
    with pytest.raises(ValueError, match="batch"):
        ours.extend(idx[:1, 6:7], 6, k, v)
    with pytest.raises(ValueError, match="layers"):
        ours.extend(idx[:, 6:7], 6, k[:1], v[:1])
    with pytest.raises(ValueError, match="block_size"):
        ours.extend(torch.zeros(2, 2, dtype=torch.long), SMALL["block_size"] - 1, k, v)
    with pytest.raises(RuntimeError, match="setup_cache"):
        ours.extend(idx[:, 6:7], 6)
