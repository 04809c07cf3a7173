"""Every quantizer kind behind the VQGAN: fp32 codes under bf16 autocast, native checkpoints, config errors and
training with the stage-1 trainer."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tamer
from tamer.ar.sampling import SamplingSettings
from tamer.config import ConfigError, from_dict, to_dict
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig, build_quantizer
from tamer.train.transformer_run import load_run_config as load_transformer_config
from tamer.train.transformer_run import train_transformer
from tamer.train.vqgan_run import load_run_config, train_vqgan
from tamer.vqgan.model import VQGAN, VQGANConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=16)
# About 8 bits per position each, as the tokenizer comparison uses them.
KINDS = {
    "vq": dict(num_codes=256, embed_dim=8),
    "vq-rotation": dict(num_codes=256, embed_dim=8, rotation_trick=True),
    "fsq": dict(kind="fsq", levels=[8, 6, 5], embed_dim=3),
    "lfq": dict(kind="lfq", embed_dim=8),
    "bsq": dict(kind="lfq", embed_dim=8, spherical=True),
    "simvq": dict(kind="simvq", num_codes=256, embed_dim=8, rotation_trick=True),
    "residual": dict(kind="residual", num_codes=16, embed_dim=8, depth=2),
    "gumbel": dict(kind="gumbel", num_codes=256, embed_dim=8),
}


def quantizer(name: str):
    torch.manual_seed(0)
    module = build_quantizer(QuantizerConfig(**KINDS[name])).eval()
    if hasattr(module, "embedding"):  # a spread-out codebook, so that many codes are in play
        with torch.no_grad():
            module.embedding.weight.normal_()
    return module


@pytest.mark.parametrize("name", KINDS)
def test_codes_under_bf16_autocast_equal_fp32(name):
    module = quantizer(name)
    z = torch.randn(8, module.config.embed_dim, 32, 32, generator=torch.Generator().manual_seed(1)).bfloat16()
    expected = module(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(z)
    assert torch.equal(out.indices, expected.indices)
    assert out.latents.dtype == torch.float32
    # Many codes in play, so that bf16 distances or roundings would have moved some.
    assert len(expected.indices.unique()) >= min(20, module.config.vocab_size)


@pytest.mark.parametrize("name", KINDS)
def test_native_checkpoint_round_trip_and_decoding(name, tmp_path):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(TINY, QuantizerConfig(**KINDS[name]))).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    model.save(tmp_path / "m")
    loaded = tamer.load(tmp_path / "m")
    assert loaded.config == model.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    indices = loaded.encode(images)
    depth = model.config.quantizer.codes_per_position
    assert indices.shape == (2, 8, 8 * depth) == (2, *model.code_shape(16, 16))
    assert torch.equal(indices, model.encode(images))
    assert int(indices.max()) < model.vocab_size
    assert torch.allclose(loaded.decode(indices), model(images).reconstruction, atol=1e-5)


def test_vocabulary_follows_from_the_quantizer():
    assert QuantizerConfig(kind="fsq", levels=[8, 6, 5], embed_dim=3).vocab_size == 240
    assert QuantizerConfig(kind="lfq", embed_dim=10).vocab_size == 1024
    assert QuantizerConfig(kind="simvq", num_codes=300, embed_dim=4).vocab_size == 300
    residual = QuantizerConfig(kind="residual", num_codes=16, embed_dim=4, depth=3)
    assert (residual.vocab_size, residual.codes_per_position) == (16, 3)
    config = VQGANConfig(TINY, QuantizerConfig(kind="fsq", levels=[5, 5, 5], embed_dim=3))
    assert from_dict(VQGANConfig, to_dict(config)) == config


@pytest.mark.parametrize("quantizer, message", [
    ({"kind": "fsq", "levels": [8, 6, 5], "embed_dim": 4}, r"embed_dim must equal len\(levels\); got embed_dim 4"),
    ({"kind": "fsq", "embed_dim": 3}, r"quantizer\.levels: kind 'fsq' needs levels"),
    ({"kind": "fsq", "levels": [2, 8], "embed_dim": 2}, r"each level must be at least 3"),
    ({"kind": "lfq", "embed_dim": 18}, r"expected at most 16 bits, got 18"),
    ({"kind": "fsq", "levels": [5, 5], "embed_dim": 2, "ema": True}, r"apply to kinds 'vq' and 'residual'"),
    ({"kind": "lfq", "embed_dim": 4, "rotation_trick": True}, r"rotation_trick applies to kinds"),
    ({"kind": "residual", "embed_dim": 4, "depth": 0}, r"quantizer\.depth: expected at least 1"),
    ({"kind": "residual", "embed_dim": 4, "shared_codebook": True, "ema": True}, r"need one codebook per depth"),
    ({"kind": "vq", "levels": [5, 5]}, r"levels applies to kind 'fsq' only"),
])
def test_bad_quantizer_configs_name_the_key(quantizer, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(VQGANConfig, {"quantizer": quantizer})


def test_residual_indices_of_the_wrong_width_are_named():
    module = quantizer("residual")
    with pytest.raises(ValueError, match=r"depth 2 needs a width that is a multiple of 2"):
        module.dequantize(torch.zeros(1, 4, 5, dtype=torch.long))


MICRO = [
    "model.autoencoder.ch=32", "model.autoencoder.ch_mult=[1,2]", "model.autoencoder.num_res_blocks=1",
    "model.autoencoder.attn_resolutions=[]", "model.autoencoder.z_channels=8", "model.autoencoder.resolution=16",
    "data.size=16", "data.length=256", "val_data.size=16", "val_data.length=8",
    "loss.disc_ndf=8", "loss.disc_num_layers=1", "loss.disc_start=1000",
    "train.batch_size=4", "train.log_every=1", "train.val_every=1000", "train.val_batches=1",
    "train.image_every=1000", "train.checkpoint_every=1000", "train.steps=30", "train.lr=2e-3",
    "train.warmup_steps=2",
]


@pytest.mark.parametrize("name", ["fsq", "lfq", "bsq", "simvq", "residual", "vq-rotation"])
def test_each_kind_trains_with_the_stage_1_trainer(name, tmp_path):
    overrides = [f"model.quantizer.{key}={value if not isinstance(value, list) else str(value).replace(' ', '')}"
                 for key, value in {"kind": "vq", **KINDS[name]}.items()]
    config = load_run_config(ROOT / "configs/vqgan_tiny_cpu.yaml",
                             MICRO + ["model.quantizer.l2_normalize=false", "model.quantizer.ema=false",
                                      "model.quantizer.dead_code_threshold=0", *overrides])
    train_vqgan(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    pixel = {r["step"]: r["pixel_loss"] for r in records if "pixel_loss" in r}
    first, last = sum(pixel[s] for s in range(1, 6)) / 5, sum(pixel[s] for s in range(26, 31)) / 5
    assert last < 0.8 * first, (first, last)
    model = tamer.load(tmp_path / "model")
    assert model.config.quantizer.kind == KINDS[name].get("kind", "vq")


@pytest.mark.parametrize("name, vocab, code_shape", [("fsq", 240, (8, 8)), ("lfq", 256, (8, 8)),
                                                     ("residual", 16, (8, 16))])
def test_stage_2_vocabulary_and_layout_follow_the_quantizer(name, vocab, code_shape, tmp_path):
    torch.manual_seed(0)
    first_stage = VQGAN(VQGANConfig(TINY, QuantizerConfig(**KINDS[name]))).save(tmp_path / "vqgan")
    overrides = ["model.gpt={n_layer: 1, n_head: 2, n_embd: 32}", "data.size=16", "data.length=64",
                 "val_data.size=16", "val_data.length=8", "train.batch_size=4", "train.steps=3", "train.log_every=1",
                 "train.val_every=1000", "train.val_batches=1", "train.image_every=1000", "train.warmup_steps=0",
                 "train.checkpoint_every=1000", "cache_codes=false", f"first_stage={first_stage}"]
    config = load_transformer_config(ROOT / "configs/transformer_tiny_class.yaml", overrides)
    logs = train_transformer(config, tmp_path / "run")
    assert torch.isfinite(torch.tensor(logs["loss"]))
    model = tamer.load(tmp_path / "run" / "model")
    assert model.image_vocab_size == vocab and model.config.gpt.vocab_size == vocab + 10 + 1  # classes + null
    assert model.config.code_shape == code_shape and model.config.image_size == (16, 16)
    assert model.config.gpt.block_size == code_shape[0] * code_shape[1]  # 1 class token + the codes - 1
    images = model.sample(torch.tensor([1, 2]), 2, SamplingSettings(cfg_scale=3.0), seed=0)  # guidance works
    assert images.shape == (2, 3, 16, 16)
    codes = model.encode_images(images)
    assert codes.shape == (2, *code_shape)
    # Raster order over B×h×(w·depth): position (i, j)'s codes are tokens (i·w + j)·depth + k, coarse to fine (the
    # per-depth layout itself is checked against vector-quantize-pytorch in test_quantizers_oracle.py).
    assert torch.equal(model.sequence(codes), codes.flatten(1))


def test_two_process_torchrun_matches_one_process_for_every_kind(tmp_path):
    sys.path.insert(0, str(ROOT / "tests/scripts"))
    from ddp_quantizers import KINDS, Toy

    script, env = str(ROOT / "tests/scripts/ddp_quantizers.py"), {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    # One thread in every process: the sums of a convolution's backward pass then run in one order everywhere.
    subprocess.run([sys.executable, script, str(tmp_path / "one")], env=env, check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script,
                    str(tmp_path / "two")], env=env, check=True, timeout=300, capture_output=True)
    for name in KINDS:
        one, two = (load_file(tmp_path / run / f"{name}.safetensors") for run in ("one", "two"))
        torch.manual_seed(0)
        start = Toy(KINDS[name]).state_dict()
        assert sorted(one) == sorted(two), name
        assert not torch.equal(one["encode.weight"], start["encode.weight"]), name  # training moved it
        # Float rounding (summation order) differs, and LFQ's sharp entropy softmax magnifies it to ~2e-5 in four
        # steps; the LFQ batch entropy taken per rank instead of over both would be off by ~7e-3.
        difference = max((two[key] - value).abs().max().item() for key, value in one.items())
        assert difference < 1e-4, (name, difference)


@pytest.mark.slow
def test_lfq_entropy_through_the_trainer_under_torchrun_matches_one_process(tmp_path):
    common = ["-m", "tamer.cli", "train", "vqgan", "--config", "configs/vqgan_lfq_cpu.yaml", *MICRO,
              "model.quantizer.embed_dim=6", "train.steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *common, "train.batch_size=4", "--out", str(tmp_path / "one")], cwd=ROOT, env=env,
                   check=True, timeout=600, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common,
                    "train.batch_size=2", "--out", str(tmp_path / "two")], cwd=ROOT, env=env, check=True, timeout=600,
                   capture_output=True)
    # The logs are the mean over ranks: with the batch entropy taken over both ranks, the quantizer loss of the
    # first step (same weights) is the one-process loss of the whole batch.
    one, two = ({r["step"]: r for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                 if "quant_loss" in r} for run in ("one", "two"))
    assert two[1]["quant_loss"] == pytest.approx(one[1]["quant_loss"], rel=1e-5, abs=1e-7)
    assert two[1]["total_loss"] == pytest.approx(one[1]["total_loss"], rel=1e-5)


@torch.no_grad()
def test_sliding_window_over_a_residual_stage_moves_by_whole_positions():
    from tamer import Transformer, TransformerConfig
    from tamer.ar.sliding_window import sample_sliding_window, window_offset

    depth, window, shape = 2, (4, 8), (6, 12)  # 4×4 positions of 2 codes, sampled on a 6×6-position grid
    first_stage = {"autoencoder": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                   "resolution": 16, "z_channels": 8},
                   "quantizer": {"kind": "residual", "num_codes": 16, "embed_dim": 8, "depth": depth}}
    config = from_dict(TransformerConfig, {
        "gpt": {"vocab_size": 32, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "first_stage": first_stage, "conditioning": {"kind": "class", "num_classes": 4}, "code_shape": list(window)})
    torch.manual_seed(0)
    model = Transformer(config).eval()
    for name, p in model.transformer.named_parameters():  # spread the logits: no near-ties for greedy choices
        p.add_(torch.randn_like(p) * (0.3 if name == "pos_emb" else 0.05))
    model.transformer.tok_emb.weight.mul_(20)
    model.transformer.head.weight.mul_(20)
    labels = torch.tensor([1, 3])
    grid = sample_sliding_window(model, labels, 2, shape, SamplingSettings(top_k=1), seed=0, progress=False)

    # The reference: a full forward over the window of every token, the window placed by whole positions.
    cond = model.condition_tokens(labels, 2).reshape(2, -1)
    (H, W), (wh, ww) = shape, window
    expected = torch.zeros(2, H, W, dtype=torch.long)
    for i in range(H):
        for j in range(W):
            i0, j0 = window_offset(i, H, wh), depth * window_offset(j // depth, W // depth, ww // depth)
            patch = expected[:, i0:i0 + wh, j0:j0 + ww].reshape(2, -1)
            logits, _ = model.transformer(torch.cat((cond, patch), 1)[:, :-1])
            place = (i - i0) * ww + (j - j0)
            expected[:, i, j] = logits[:, cond.shape[1] - 1 + place, :16].argmax(-1)
    assert torch.equal(grid, expected)
    assert model.sample(labels, 2, SamplingSettings(top_k=1), seed=0, code_shape=shape).shape == (2, 3, 12, 12)  # f2
    with pytest.raises(ValueError, match="grid width must be a multiple of 2"):
        sample_sliding_window(model, labels, 2, (6, 11), progress=False)


@pytest.mark.parametrize("name", ["fsq", "lfq", "simvq", "residual-ema"])
def test_resume_from_a_checkpoint_follows_the_same_trajectory(name, tmp_path):
    options = KINDS.get(name) or dict(kind="residual", num_codes=16, embed_dim=8, depth=2, ema=True, ema_decay=0.8,
                                      dead_code_threshold=2)
    overrides = [f"model.quantizer.{key}={str(value).replace(' ', '')}"
                 for key, value in {"kind": "vq", **options}.items()]
    config = load_run_config(ROOT / "configs/vqgan_tiny_cpu.yaml", MICRO + [
        "model.quantizer.l2_normalize=false", "model.quantizer.ema=false", "model.quantizer.dead_code_threshold=0",
        *overrides, "train.steps=6",
        "train.checkpoint_every=3", "train.schedule=constant", "loss.disc_start=2", "loss.disc_warmup_steps=1"])
    train_vqgan(config, tmp_path / "straight")
    train_vqgan(config, tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-00000006")  # as if killed before step 6's checkpoint
    train_vqgan(config, tmp_path / "resumed", resume=True)
    logged = [r["step"] for r in map(json.loads, (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines())
              if "total_loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6, 4, 5, 6]  # it did go on from step 3's checkpoint
    a, b = tamer.load(tmp_path / "straight" / "model"), tamer.load(tmp_path / "resumed" / "model")
    assert all(torch.allclose(b.state_dict()[k], v, atol=1e-7) for k, v in a.state_dict().items())
