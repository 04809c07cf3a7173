"""The sliding-window sampler against the original algorithm (scripts/sample_conditional.py) run on the original
minGPT with the same weights, plus its guarantees: seeds, guidance, init independence, caches, errors."""

import pytest
import torch
from taming.modules.transformer import mingpt  # needs the `transformers` stub of conftest.py

import tamer.ar.sliding_window as sw
from tamer import SamplingSettings, Transformer, TransformerConfig
from tamer.ar.sampling import guide
from tamer.ar.sliding_window import sample_sliding_window, window_offset
from tamer.config import from_dict

AE = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=16, z_channels=8,
          in_channels=3, out_ch=3)
FIRST_STAGE = {"autoencoder": AE, "quantizer": {"num_codes": 32, "embed_dim": 8}}
WINDOW = (8, 8)
GPT_TINY = {"vocab_size": 64, "block_size": 128, "n_layer": 2, "n_head": 2, "n_embd": 32}
NONE = {"kind": "none"}
CLASS = {"kind": "class", "num_classes": 4, "classifier_free": True}
COORD = {"kind": "coord", "key": "coord", "coord_levels": 7, "coord_factor": 2}  # factor 2: the first stage's
LABELS = {"kind": "labels", "key": "segmentation", "num_labels": 5, "label_factor": 2}
LABELS_CF = dict(LABELS, classifier_free=True)
GREEDY = SamplingSettings(top_k=1)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(conditioning: dict, n_unmasked: int = 0, token_order: str = "raster", **gpt) -> Transformer:
    config = from_dict(TransformerConfig, {"gpt": dict(GPT_TINY, n_unmasked=n_unmasked, **gpt),
                                           "first_stage": FIRST_STAGE, "conditioning": conditioning,
                                           "code_shape": list(WINDOW), "token_order": token_order})
    model = Transformer(config)
    with torch.no_grad():  # spread the logits so greedy choices have no near-ties
        for name, p in model.transformer.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name == "pos_emb" else 0.05))
        model.transformer.tok_emb.weight.mul_(20)
        model.transformer.head.weight.mul_(20)
    return model.eval()


def original_gpt(model: Transformer) -> mingpt.GPT:
    c = model.transformer.config
    gpt = mingpt.GPT(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
                     n_embd=c.n_embd, n_unmasked=c.n_unmasked).eval()
    missing, unexpected = gpt.load_state_dict(model.transformer.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("attn.mask") for k in missing)
    return gpt


@torch.no_grad()
def original_sliding_window(gpt, cidx, shape, window, vocab, init=None, start=0, null_cidx=None, scale=1.0):
    """scripts/sample_conditional.py's loop, transcribed: a full forward over the whole window for every token,
    the most likely image token. ``cidx``: ``B×h×w`` (spatial, cropped like the image) or ``B×L`` (as is).
    Guidance (``null_cidx``) runs the null condition as a second forward and mixes the logits."""
    (H, W), (wh, ww) = shape, window
    half = wh // 2  # the original's 8 for its 16×16 window (even windows only)
    idx = torch.zeros(cidx.shape[0], H, W, dtype=torch.long) if init is None else init.clone()
    for position in range(start, H * W):
        i, j = divmod(position, W)
        if i <= half:
            local_i = i
        elif H - i < half:
            local_i = wh - (H - i)
        else:
            local_i = half
        if j <= ww // 2:
            local_j = j
        elif W - j < ww // 2:
            local_j = ww - (W - j)
        else:
            local_j = ww // 2
        i_start, j_start = i - local_i, j - local_j
        i_end, j_end = i_start + wh, j_start + ww
        patch = idx[:, i_start:i_end, j_start:j_end]
        patch = patch.reshape(patch.shape[0], -1)

        def window_logits(c):
            cpatch = c[:, i_start:i_end, j_start:j_end] if c.dim() == 3 else c
            cpatch = cpatch.reshape(cpatch.shape[0], -1)
            logits, _ = gpt(torch.cat((cpatch, patch), dim=1)[:, :-1])
            logits = logits[:, -wh * ww:, :]
            return logits.reshape(c.shape[0], wh, ww, -1)[:, local_i, local_j, :vocab]

        logits = window_logits(cidx)
        if null_cidx is not None:
            logits = guide(torch.cat((logits, window_logits(null_cidx))), scale)
        idx[:, i, j] = logits.argmax(-1)
    return idx


def coordinates(batch: int, shape) -> torch.Tensor:
    """A coordinate condition map for a ``shape`` code grid (pixels: ×2), rows spread over [0, 1]."""
    h, w = shape[0] * 2, shape[1] * 2
    return torch.linspace(0, 1, h)[None, None, :, None].expand(batch, 1, h, w).contiguous()


def label_maps(batch: int, shape) -> torch.Tensor:
    """Label maps for a ``shape`` code grid (pixels: ×2): seeded random labels 0..4, one per 2×2 cell."""
    cells = torch.randint(0, 5, (batch, *shape), generator=torch.Generator().manual_seed(shape[0] * 100 + shape[1]))
    return cells.repeat_interleave(2, 1).repeat_interleave(2, 2)


# ---- the original's window placement ------------------------------------------------------------------------------


def test_window_offset_is_the_originals_for_even_windows_and_stays_inside_for_odd():
    for window in range(2, 18, 2):
        half = window // 2
        for size in range(window, window + 24):
            for index in range(size):
                local = index if index <= half else (window - (size - index) if size - index < half else half)
                assert window_offset(index, size, window) == index - local
    for window in range(1, 18, 2):
        for size in range(window, window + 24):
            offsets = [window_offset(index, size, window) for index in range(size)]
            assert all(o <= index < o + window and 0 <= o <= size - window for index, o in enumerate(offsets))
            assert offsets == sorted(offsets)


# ---- greedy decoding equals the original algorithm on the original minGPT --------------------------------------------


@pytest.mark.parametrize("conditioning,n_unmasked", [(NONE, 0), (CLASS, 0), (COORD, 0), (COORD, 64), (LABELS, 0)],
                         ids=["start-token", "class", "coord", "coord-bidirectional-prefix", "label-grid"])
def test_greedy_grid_equals_the_original_algorithm_on_original_mingpt(conditioning, n_unmasked):
    shape = (24, 20)
    model = make_model(conditioning, n_unmasked=n_unmasked)
    condition = {"none": None, "class": torch.tensor([1, 3]), "coord": coordinates(2, shape),
                 "labels": label_maps(2, shape)}[conditioning["kind"]]
    codes = model.sample_codes(condition, 2, GREEDY, code_shape=shape)
    assert codes.shape == (2, *shape) and codes.dtype == torch.long
    cidx = model.condition_tokens(condition, 2)
    if cidx.dim() == 3:
        assert cidx.shape[1:] == shape
    expected = original_sliding_window(original_gpt(model), cidx, shape, WINDOW, model.image_vocab_size)
    assert torch.equal(codes, expected)
    assert codes.unique().numel() > 4  # not a degenerate constant grid


def test_guided_greedy_grid_equals_the_original_algorithm_with_guidance():
    shape = (12, 11)
    model = make_model(CLASS)
    labels = torch.tensor([0, 2])
    settings = SamplingSettings(top_k=1, cfg_scale=3.0)
    codes = sample_sliding_window(model, labels, 2, shape, settings, progress=False)
    cidx = model.condition_tokens(labels, 2)
    null = model.cond_stage_model.null_like(cidx)
    expected = original_sliding_window(original_gpt(model), cidx, shape, WINDOW, model.image_vocab_size,
                                       null_cidx=null, scale=3.0)
    assert torch.equal(codes, expected)
    assert not torch.equal(codes, sample_sliding_window(model, labels, 2, shape, GREEDY, progress=False))


def test_prefix_is_kept_and_sampling_continues_from_it():
    shape = (10, 12)
    model = make_model(NONE)
    full = sample_sliding_window(model, None, 2, shape, GREEDY, progress=False)
    k = 5 * 12 + 7
    assert torch.equal(sample_sliding_window(model, None, 2, shape, GREEDY, prefix=full.reshape(2, -1)[:, :k],
                                             progress=False), full)
    other = torch.randint(0, 32, (2, k))
    codes = sample_sliding_window(model, None, 2, shape, GREEDY, prefix=other, progress=False)
    assert torch.equal(codes.reshape(2, -1)[:, :k], other)
    init = torch.zeros(2, *shape, dtype=torch.long)
    init.view(2, -1)[:, :k] = other
    expected = original_sliding_window(original_gpt(model), model.condition_tokens(None, 2), shape, WINDOW, 32,
                                       init=init, start=k)
    assert torch.equal(codes, expected)


# ---- the wavefront schedule draws the raster schedule's grid -------------------------------------------------------


def sample_recording(monkeypatch, model, condition, shape, settings, schedule, **options):
    """The grid, the logits of every drawn token by grid position, and the GPT calls made, under ``schedule``."""
    logits, calls = {}, []

    def recording_draw(rows, settings, seeds, position):
        assert position not in logits, "a token was drawn twice"
        logits[position] = rows.clone()
        return draw(rows, settings, seeds, position)

    def counting_run(gpt, chunks):
        calls.append(len(chunks))
        return run(gpt, chunks)

    draw, run = sw.draw, sw._run_chunks
    monkeypatch.setattr(sw, "draw", recording_draw)
    monkeypatch.setattr(sw, "_run_chunks", counting_run)
    batch = 2 if condition is None else condition.shape[0]
    grid = sample_sliding_window(model, condition, batch, shape, settings, seed=5, progress=False,
                                 schedule=schedule, **options)
    monkeypatch.undo()
    return grid, logits, calls


COORD_CF = dict(COORD, classifier_free=True)
TOP_K = SamplingSettings(top_k=6, temperature=0.9)
WAVEFRONT_CASES = {  # conditioning, condition, grid, settings, options
    "start-token-greedy": (NONE, None, (13, 11), GREEDY, {}),
    "start-token-top-k": (NONE, None, (10, 12), TOP_K, {}),
    "class-top-k": (CLASS, torch.tensor([1, 3]), (12, 17), TOP_K, {}),
    "class-guided-top-k": (CLASS, torch.tensor([0, 2]), (11, 10), SamplingSettings(top_k=6, cfg_scale=2.5), {}),
    "class-guided-greedy": (CLASS, torch.tensor([2, 1]), (9, 13), SamplingSettings(top_k=1, cfg_scale=3.0), {}),
    "coord-top-k": (COORD, coordinates(2, (13, 15)), (13, 15), TOP_K, {}),
    "coord-guided-top-p": (COORD_CF, coordinates(2, (11, 12)), (11, 12), SamplingSettings(top_p=0.9, cfg_scale=2.0),
                           {}),
    "labels-top-k": (LABELS, label_maps(2, (12, 13)), (12, 13), TOP_K, {}),
    "labels-guided-top-k": (LABELS_CF, label_maps(2, (10, 11)), (10, 11), SamplingSettings(top_k=6, cfg_scale=2.0),
                            {}),
    "slightly-larger": (CLASS, torch.tensor([3, 0]), (9, 9), TOP_K, {}),
    "one-more-column": (NONE, None, (8, 9), TOP_K, {}),
    "one-more-row": (COORD, coordinates(2, (9, 8)), (9, 8), TOP_K, {}),
    "prefix": (CLASS, torch.tensor([1, 2]), (10, 12), TOP_K, {"prefix": torch.arange(2 * 67).view(2, 67) * 7 % 32}),
    "init-codes": (NONE, None, (11, 13), TOP_K, {"init_codes": torch.arange(2 * 143).view(2, 11, 13) * 5 % 32}),
    "one-window": (COORD, coordinates(2, (12, 14)), (12, 14), TOP_K, {"max_cached_windows": 1}),
    "two-windows": (CLASS, torch.tensor([1, 3]), (13, 17), SamplingSettings(top_k=6, cfg_scale=2.0),
                    {"max_cached_windows": 2}),
    "five-windows": (NONE, None, (14, 19), TOP_K, {"max_cached_windows": 5}),
}


@pytest.mark.parametrize("case", list(WAVEFRONT_CASES))
def test_wavefront_grid_equals_the_raster_grid_token_for_token(case, monkeypatch):
    conditioning, condition, shape, settings, options = WAVEFRONT_CASES[case]
    model = make_model(conditioning, n_unmasked=64 if case == "coord-top-k" else 0)  # one bidirectional prefix
    raster, raster_logits, raster_calls = sample_recording(monkeypatch, model, condition, shape, settings, "raster",
                                                           **options)
    wave, wave_logits, wave_calls = sample_recording(monkeypatch, model, condition, shape, settings, "wavefront",
                                                     **options)
    assert torch.equal(wave, raster)
    given = options["prefix"].shape[1] if "prefix" in options else 0
    assert sorted(wave_logits) == sorted(raster_logits) == list(range(given, shape[0] * shape[1]))
    for position, logits in raster_logits.items():
        torch.testing.assert_close(wave_logits[position], logits, atol=1e-4, rtol=1e-4)
    assert raster_calls == [1] * len(raster_logits)
    assert sum(wave_calls) == len(raster_logits)
    if options.get("max_cached_windows") == 1 or shape[1] == WINDOW[1]:  # one token a step; every row waits
        assert wave_calls == raster_calls                                  # for the whole row above
    else:
        assert len(wave_calls) < len(raster_calls)
    if "prefix" in options:
        assert torch.equal(wave.reshape(2, -1)[:, :options["prefix"].shape[1]], options["prefix"])


def test_wavefront_steps_follow_the_critical_path():
    """The first token of a row reads the first ``ww`` columns of the row above, so row ``i`` starts ``ww`` steps
    after row ``i - 1`` and is never held back after that: ``W + (H - 1)·ww`` steps, one GPT call each."""
    model = make_model(NONE)
    shape = (12, 40)
    calls = []
    run = sw._run_chunks

    def counting_run(gpt, chunks):
        calls.append(len(chunks))
        return run(gpt, chunks)

    sw._run_chunks = counting_run
    try:
        sample_sliding_window(model, None, 1, shape, GREEDY, progress=False)
    finally:
        sw._run_chunks = run
    assert len(calls) == shape[1] + (shape[0] - 1) * WINDOW[1]
    assert sum(calls) == shape[0] * shape[1] and max(calls) == shape[1] // WINDOW[1]


def test_a_wave_larger_than_the_position_bound_runs_in_several_calls(monkeypatch):
    model = make_model(COORD)
    shape = (10, 27)
    condition = coordinates(2, shape)
    whole, _, whole_calls = sample_recording(monkeypatch, model, condition, shape, TOP_K, "wavefront")
    monkeypatch.setattr(sw, "_MAX_POSITIONS", 200)  # a fresh coordinate window alone is 2 × 64+ positions
    split, _, split_calls = sample_recording(monkeypatch, model, condition, shape, TOP_K, "wavefront")
    assert torch.equal(whole, split)
    assert sum(split_calls) == sum(whole_calls) and len(split_calls) > len(whole_calls)


# ---- guarantees ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditioning", [NONE, COORD], ids=["start-token", "coord"])
def test_result_does_not_depend_on_init_codes(conditioning):
    shape = (11, 13)
    model = make_model(conditioning)
    condition = coordinates(2, shape) if conditioning["kind"] == "coord" else None
    for settings, seed in ((GREEDY, None), (SamplingSettings(top_p=0.9), 3)):
        runs = [sample_sliding_window(model, condition, 2, shape, settings, seed, progress=False,
                                      init_codes=torch.randint(0, 32, (2, *shape))) for _ in range(2)]
        runs.append(sample_sliding_window(model, condition, 2, shape, settings, seed, progress=False))
        assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_a_seed_gives_the_same_grid_in_any_batch():
    shape = (10, 9)
    model = make_model(CLASS)
    settings = SamplingSettings(temperature=1.0)
    batch = sample_sliding_window(model, torch.tensor([0, 1, 2]), 3, shape, settings, seed=7, progress=False)
    alone = sample_sliding_window(model, torch.tensor([1]), 1, shape, settings, seed=8, progress=False)
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[2])
    again = sample_sliding_window(model, torch.tensor([0, 1, 2]), 3, shape, settings, seed=7, progress=False)
    assert torch.equal(batch, again)
    assert not torch.equal(batch, sample_sliding_window(model, torch.tensor([0, 1, 2]), 3, shape, settings, seed=9,
                                                        progress=False))


def test_guidance_changes_sampled_grids():
    shape = (9, 10)
    model = make_model(CLASS)
    labels = torch.tensor([1, 2])
    plain = sample_sliding_window(model, labels, 2, shape, SamplingSettings(), seed=0, progress=False)
    guided = sample_sliding_window(model, labels, 2, shape, SamplingSettings(cfg_scale=2.5), seed=0, progress=False)
    assert guided.shape == plain.shape and not torch.equal(plain, guided)
    assert int(guided.max()) < 32


@pytest.mark.parametrize("settings", [SamplingSettings(), SamplingSettings(top_k=5, temperature=0.8),
                                      SamplingSettings(top_p=0.8, cfg_scale=2.0)], ids=["plain", "top-k", "top-p-cfg"])
def test_grid_of_the_window_size_equals_the_plain_sampler(settings):
    model = make_model(CLASS)
    labels = torch.tensor([3, 0])
    plain = model.sample_codes(labels, 2, settings, seed=11)
    window = sample_sliding_window(model, labels, 2, WINDOW, settings, seed=11, progress=False)
    assert torch.equal(plain, window)


@pytest.mark.parametrize("windows", [1, 2, 5])
def test_fewer_cached_windows_give_the_same_grid(windows):
    shape = (13, 17)
    model = make_model(COORD)
    condition = coordinates(1, shape)
    settings = SamplingSettings(top_k=8)
    full = sample_sliding_window(model, condition, 1, shape, settings, seed=4, progress=False)
    assert torch.equal(full, sample_sliding_window(model, condition, 1, shape, settings, seed=4, progress=False,
                                                   max_cached_windows=windows))


def test_callback_sees_every_token_in_order():
    shape = (9, 9)
    model = make_model(NONE)
    seen = []

    def callback(k, grid):
        assert grid.shape == (1, *shape)
        seen.append((k, int(grid.reshape(-1)[k])))

    codes = sample_sliding_window(model, None, 1, shape, GREEDY, callback=callback, schedule="raster")
    assert [k for k, _ in seen] == list(range(81))
    assert [t for _, t in seen] == codes.reshape(-1).tolist()


def test_wavefront_calls_back_once_per_token_and_never_changes_a_drawn_token():
    shape = (10, 20)
    model = make_model(NONE)
    counts, grids = [], []

    def callback(k, grid):
        counts.append(k)
        grids.append(grid.clone())

    init = torch.full((1, *shape), 31)
    codes = sample_sliding_window(model, None, 1, shape, GREEDY, callback=callback, init_codes=init)
    assert counts == list(range(200))
    drawn = [(g != init).sum().item() for g in grids]  # at most: a drawn 31 looks undrawn
    assert drawn == sorted(drawn)
    for before, after in zip(grids, grids[1:]):
        changed = before != init
        assert torch.equal(before[changed], after[changed])
    assert torch.equal(grids[-1], codes)


def test_errors_name_the_problem():
    model = make_model(COORD)
    with pytest.raises(ValueError, match="smaller than the model's window"):
        sample_sliding_window(model, coordinates(1, (7, 12)), 1, (7, 12), GREEDY)
    with pytest.raises(ValueError, match="token grid is"):
        sample_sliding_window(model, coordinates(1, (10, 10)), 1, (12, 10), GREEDY)
    with pytest.raises(ValueError, match="block_size >= 127"):
        sample_sliding_window(make_model(COORD, block_size=100), coordinates(1, (10, 10)), 1, (10, 10), GREEDY)
    with pytest.raises(ValueError, match="raster"):
        make_model(NONE, token_order="zcurve").sample_codes(None, 1, GREEDY, code_shape=(10, 10))
    with pytest.raises(ValueError, match="init_codes"):
        sample_sliding_window(make_model(NONE), None, 1, (10, 10), GREEDY, init_codes=torch.zeros(1, 9, 10))
    with pytest.raises(ValueError, match="n_unmasked"):
        sample_sliding_window(make_model(NONE, n_unmasked=4), None, 1, (10, 10), GREEDY)
    with pytest.raises(ValueError, match="schedule: expected one of wavefront, raster"):
        sample_sliding_window(make_model(NONE), None, 1, (10, 10), GREEDY, schedule="zigzag")
