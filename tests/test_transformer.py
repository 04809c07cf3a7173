"""The stage-2 model: sequence layout, training loss, token orders, conditions and the sampler's guarantees."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from taming.modules.transformer import permuter as original_permuter

import tamer
from tamer import SamplingSettings, Transformer, TransformerConfig
from tamer.ar.sampling import draw, hashed_uniform
from tamer.ar.token_order import TokenOrder, order_indices
from tamer.config import ConfigError, from_dict

AE = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], resolution=16, z_channels=8,
          in_channels=3, out_ch=3)
FIRST_STAGE = {"autoencoder": AE, "quantizer": {"num_codes": 32, "embed_dim": 8}}
SEG_STAGE = {"autoencoder": dict(AE, in_channels=5, out_ch=5), "quantizer": {"num_codes": 16, "embed_dim": 8},
             "colorize_nlabels": 5}
GPT_SMALL = {"vocab_size": 64, "block_size": 160, "n_layer": 2, "n_head": 2, "n_embd": 32}


def make_model(conditioning: dict, code_shape=(8, 8), token_order="raster") -> Transformer:
    config = from_dict(TransformerConfig, {"gpt": GPT_SMALL, "first_stage": FIRST_STAGE, "conditioning": conditioning,
                                           "code_shape": list(code_shape), "token_order": token_order})
    model = Transformer(config)
    with torch.no_grad():  # spread the logits so greedy choices have no near-ties
        model.transformer.tok_emb.weight.mul_(20)
        model.transformer.head.weight.mul_(20)
    return model.eval()


CLASS = {"kind": "class", "num_classes": 4, "classifier_free": True}


def naive_greedy(model: Transformer, cond_tokens: torch.Tensor, steps: int, prefix=None) -> torch.Tensor:
    """The original's sampler: a full forward over everything so far for every token, argmax of image logits."""
    seq = cond_tokens if prefix is None else torch.cat((cond_tokens, prefix), 1)
    for _ in range(steps):
        logits, _ = model.transformer(seq)
        seq = torch.cat((seq, logits[:, -1, : model.image_vocab_size].argmax(-1, keepdim=True)), 1)
    return seq[:, cond_tokens.shape[1]:]


@pytest.mark.parametrize("conditioning,condition", [
    ({"kind": "none"}, None),
    (CLASS, torch.tensor([0, 3])),
    ({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, torch.randint(0, 5, (2, 16, 16))),
    ({"kind": "coord", "key": "coord", "coord_levels": 7, "coord_factor": 2}, torch.rand(2, 1, 16, 16)),
    ({"kind": "labels", "key": "segmentation", "num_labels": 5, "label_factor": 2}, torch.randint(0, 5, (2, 8, 8))),
])
def test_greedy_sampling_equals_full_forward_loop(conditioning, condition):
    model = make_model(conditioning, code_shape=(8, 8) if conditioning["kind"] in ("none", "class") else (4, 4))
    codes = model.sample_codes(condition, 2, SamplingSettings(top_k=1))
    cond = model.condition_tokens(condition, 2).reshape(2, -1)
    expected = naive_greedy(model, cond, codes[0].numel())
    assert torch.equal(model.sequence(codes), expected)


def test_condition_ids_follow_the_image_codebook_and_never_come_out():
    model = make_model(CLASS)
    assert model.condition_tokens(torch.tensor([0, 3]), 2).flatten().tolist() == [32, 35]
    assert model.cond_stage_model.null_token == 36
    with torch.no_grad():  # make condition ids the most likely next tokens; sampling must still avoid them
        model.transformer.head.weight[32:].fill_(0)
        model.transformer.head.bias = None
        model.transformer.head.weight[40].mul_(0).add_(100)
    codes = model.sample_codes(torch.tensor([1, 2]), 2, SamplingSettings(temperature=1.0), seed=0)
    assert int(codes.max()) < 32


def test_training_loss_is_next_token_cross_entropy_over_image_ids():
    model = make_model(CLASS)
    codes = torch.randint(0, 32, (3, 8, 8))
    cond = model.condition_tokens(torch.tensor([0, 1, 2]), 3)
    logits, loss = model(codes, cond)
    full, _ = model.transformer(torch.cat((cond, codes.reshape(3, -1)[:, :-1]), 1))
    assert torch.allclose(logits, full)
    expected = F.cross_entropy(full[..., :32].reshape(-1, 32), codes.reshape(-1))
    assert torch.allclose(loss, expected)
    per_token = model(codes, cond, reduction="none")[1]
    assert per_token.shape == (3, 64) and torch.allclose(per_token.mean(), loss)


def test_training_loss_falls_on_a_fixed_batch():
    model = make_model(CLASS)
    model.transformer.train()
    codes = torch.randint(0, 32, (4, 8, 8))
    cond = model.condition_tokens(torch.arange(4), 4)
    optimizer = torch.optim.AdamW(model.transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(codes, cond)[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert not model.first_stage_model.training


def test_corruption_and_condition_dropout_rates():
    model = make_model(CLASS)
    codes = torch.randint(0, 32, (64, 8, 8))
    kept = (model.corrupt(codes, 0.7) == codes).float().mean().item()
    assert 0.7 < kept < 0.76  # kept, plus replaced by the same id 1/32 of the time
    cond = model.condition_tokens(torch.randint(0, 4, (2000,)), 2000)
    dropped = (model.drop_condition(cond, 0.1) == model.cond_stage_model.null_token).float().mean().item()
    assert 0.08 < dropped < 0.12


def test_seeds_reproduce_a_sample_in_any_batch():
    model = make_model(CLASS)
    settings = SamplingSettings(temperature=1.0, top_k=20)
    batch = model.sample_codes(torch.tensor([2, 2, 2]), 3, settings, seed=10)
    alone = model.sample_codes(torch.tensor([2]), 1, settings, seed=11)
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


def test_guidance_runs_conditional_and_null_rows_together():
    model = make_model(CLASS)
    scale = 3.0
    codes = model.sample_codes(torch.tensor([1, 3]), 2, SamplingSettings(top_k=1, cfg_scale=scale))
    cond = model.condition_tokens(torch.tensor([1, 3]), 2)
    null = torch.full_like(cond, model.cond_stage_model.null_token)
    seq_c, seq_u = cond, null
    for _ in range(64):  # guided greedy decoding, written out with full forwards
        lc = model.transformer(seq_c)[0][:, -1, :32]
        lu = model.transformer(seq_u)[0][:, -1, :32]
        token = (lu + scale * (lc - lu)).argmax(-1, keepdim=True)
        seq_c, seq_u = torch.cat((seq_c, token), 1), torch.cat((seq_u, token), 1)
    assert torch.equal(model.sequence(codes), seq_c[:, 1:])
    unguided = model.sample_codes(torch.tensor([1, 3]), 2, SamplingSettings(top_k=1))
    assert not torch.equal(codes, unguided)


def test_guidance_needs_a_null_condition():
    model = make_model({"kind": "class", "num_classes": 4})
    with pytest.raises(ValueError, match="classifier_free"):
        model.sample_codes(torch.tensor([1]), 1, SamplingSettings(cfg_scale=2.0))


def test_completion_keeps_the_given_rows():
    model = make_model(CLASS)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    prefix = model.sequence(model.encode_images(images))[:, :24]
    codes = model.sample_codes(torch.tensor([0, 1]), 2, SamplingSettings(top_k=1), prefix=prefix)
    assert torch.equal(model.sequence(codes)[:, :24], prefix)
    expected = naive_greedy(model, model.condition_tokens(torch.tensor([0, 1]), 2), 40, prefix)
    assert torch.equal(model.sequence(codes), expected)
    assert model.complete(images, 3, torch.tensor([0, 1]), SamplingSettings(top_k=1)).shape == (2, 3, 16, 16)


def test_gumbel_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]])
    seeds = torch.arange(20000)
    counts = torch.zeros(5)
    for position in range(2):
        tokens = draw(logits.expand(len(seeds), -1), SamplingSettings(temperature=1.0), seeds, position)
        counts += torch.bincount(tokens, minlength=5)
    frequencies = counts / counts.sum()
    assert torch.allclose(frequencies, logits.softmax(-1)[0], atol=0.01)
    top2 = draw(logits.expand(1000, -1), SamplingSettings(top_k=2), torch.arange(1000), 0)
    assert set(top2.tolist()) == {0, 1}


def splitmix_reference(seed: int, position: int, column: int) -> float:
    mask = (1 << 64) - 1
    z = ((seed << 40) + (position << 20) + column) * 0x9E3779B97F4A7C15 & mask
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & mask
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
    z ^= z >> 31
    return ((z >> 40) + 0.5) / (1 << 24)


def test_hashed_noise_is_splitmix64_of_the_counter():
    seeds = torch.tensor([0, 1, 12345, 2**31 - 1])
    noise = hashed_uniform(seeds, 77, 50)
    for row, seed in enumerate(seeds.tolist()):
        for column in (0, 1, 49):
            assert noise[row, column].item() == pytest.approx(splitmix_reference(seed, 77, column), abs=1e-7)
    assert 0 < noise.min() and noise.max() < 1


@pytest.mark.parametrize("name,cls", [("raster", "Identity"), ("subsample", "Subsample"), ("zcurve", "ZCurve"),
                                      ("alternate", "AlternateParsing")])
def test_token_orders_match_the_original_permuters(name, cls):
    h = w = 8
    original = (getattr(original_permuter, cls)() if cls == "Identity" else getattr(original_permuter, cls)(h, w))
    x = torch.arange(h * w)[None]
    order = TokenOrder(name, h, w)
    assert torch.equal(order(x.reshape(1, h, w)), original(x))
    assert torch.equal(order.grid(order(x.reshape(1, h, w))), x.reshape(1, h, w))
    assert torch.equal(order_indices(name, h, w), original(x)[0])


def test_non_raster_model_samples_and_scores_in_its_order():
    model = make_model({"kind": "none"}, token_order="zcurve")
    codes = model.sample_codes(None, 2, SamplingSettings(top_k=1))
    expected = naive_greedy(model, model.condition_tokens(None, 2), 64)
    assert torch.equal(model.sequence(codes), expected)


def test_save_and_load_round_trip(tmp_path):
    model = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    model.save(tmp_path / "m")
    loaded = tamer.load(tmp_path / "m")
    assert isinstance(loaded, Transformer)
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    seg = torch.randint(0, 5, (1, 16, 16))
    settings = SamplingSettings(top_k=5)
    assert torch.equal(loaded.sample_codes(seg, 1, settings, seed=3), model.sample_codes(seg, 1, settings, seed=3))


def test_condition_errors_name_the_problem():
    model = make_model(CLASS)
    with pytest.raises(ValueError, match="class label 4 is outside 0..3"):
        model.condition_tokens(torch.tensor([4]), 1)
    seg = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    with pytest.raises(ValueError, match="labels must lie in 0..4"):
        seg.condition_tokens(torch.full((1, 16, 16), 7), 1)
    with pytest.raises(ValueError, match="expected B×5×H×W"):
        seg.condition_tokens(torch.rand(1, 3, 16, 16), 1)
    with pytest.raises(ConfigError, match="gpt.vocab_size: 33 is too small"):
        from_dict(TransformerConfig, {"gpt": dict(GPT_SMALL, vocab_size=33), "first_stage": FIRST_STAGE,
                                      "conditioning": CLASS})
    with pytest.raises(ConfigError, match="conditioning.stage"):
        from_dict(TransformerConfig, {"gpt": GPT_SMALL, "first_stage": FIRST_STAGE,
                                      "conditioning": {"kind": "spatial"}})
    with pytest.raises(ValueError, match="block_size"):
        make_model(CLASS, code_shape=(16, 16)).sample_codes(torch.tensor([0]), 1)


def test_segmentation_maps_are_one_hot_encoded_for_the_stage():
    model = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    labels = torch.randint(0, 5, (2, 16, 16))
    one_hot = F.one_hot(labels, 5).permute(0, 3, 1, 2).float()
    stage = model.cond_stage_model
    assert torch.equal(stage.tokens(labels, 2), stage.model.encode(one_hot) + model.image_vocab_size)
    assert stage.decode(stage.tokens(labels, 2)).shape == (2, 3, 16, 16)


def test_coordinate_tokens_match_the_original_coord_stage():
    from taming.modules.misc.coord import CoordStage

    model = make_model({"kind": "coord", "key": "coord", "coord_levels": 7, "coord_factor": 2}, code_shape=(4, 4))
    coords = torch.rand(3, 1, 16, 16) * 0.92  # below 1 - half a level, like the original data
    _, _, (_, _, expected) = CoordStage(7, 2).encode(coords)
    assert torch.equal(model.condition_tokens(coords, 3), expected[:, 0] + 32)
    expected_map = (np.arange(7 * 5).reshape(7, 5) / 35)[2:6, 1:3]
    coordinate_map = tamer.ar.conditioning.coordinate_map
    np.testing.assert_allclose(coordinate_map(4, 2, top=2, left=1, full_height=7, full_width=5)[0], expected_map,
                               rtol=1e-6)
    full = coordinate_map(16, 16)[None]
    assert int(model.condition_tokens(full, 1).max()) <= 32 + 6
