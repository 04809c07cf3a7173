"""Stage-2 training: learning on procedural data, exact resume after SIGKILL, the code cache, segmentation
conditions, derived sizes and config errors, the frozen first stage, the optimizer's decay groups."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tamer
from tamer import VQGAN, VQGANConfig
from tamer.cli import main as cli
from tamer.config import ConfigError
from tamer.data import ProceduralShapes
from tamer.data.codes import read_fingerprint
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.train.trainer import Trainer
from tamer.train.transformer_run import build_transformer, load_run_config, train_transformer
from tamer.train.transformer_task import TransformerTask, decay_groups

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs/transformer_tiny_class.yaml"
MICRO = [
    "model.gpt={n_layer: 2, n_head: 2, n_embd: 32}",
    "data.size=16", "data.length=256", "val_data.size=16", "val_data.length=32",
    "train.batch_size=8", "train.log_every=1", "train.val_every=1000", "train.val_batches=2",
    "train.image_every=1000", "train.warmup_steps=0", "train.checkpoint_every=1000",
]


def micro_vqgan(path: Path, in_channels: int = 3, seed: int = 0) -> Path:
    """A random-init VQGAN, f2: 16×16 images -> 8×8 codes of 32."""
    torch.manual_seed(seed)
    labels = in_channels if in_channels != 3 else None
    model = VQGAN(VQGANConfig(
        autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                                      resolution=16, in_channels=in_channels, out_ch=in_channels),
        quantizer=QuantizerConfig(num_codes=32, embed_dim=8), colorize_nlabels=labels))
    return model.save(path)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    return {"image": micro_vqgan(root / "vqgan"), "seg": micro_vqgan(root / "seg-vqgan", in_channels=11)}


def micro(stages, *extra):
    return MICRO + [f"first_stage={stages['image']}", *extra]


def records(run: Path) -> tuple[dict[int, dict], list[dict]]:
    steps, validation = {}, []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps[record["step"]] = record  # a resumed run logs the replayed steps again; the last one counts
        if "val/nll" in record:
            validation.append(record)
    return steps, validation


def test_micro_transformer_learns(stages, tmp_path):
    # Measured: training loss 3.11 nats/token (mean of steps 1-5; uniform is 3.47) -> 1.76 (steps 76-80); held-out
    # NLL 1.87 at step 40 -> 1.76 at step 80 (EMA weights).
    config = load_run_config(PRESET, micro(stages, "train.steps=80", "train.lr=3e-3", "train.val_every=40",
                                           "cache_codes=false", "data.flip=false", "train.ema_decay=0.9"))
    train_transformer(config, tmp_path)
    steps, validation = records(tmp_path)
    first = sum(steps[s]["loss"] for s in range(1, 6)) / 5
    last = sum(steps[s]["loss"] for s in range(76, 81)) / 5
    assert first > 2.8 and last < 0.7 * first, (first, last)
    assert steps[80]["bits_per_token"] == pytest.approx(steps[80]["loss"] / 0.6931471805599453)
    assert [v["step"] for v in validation] == [40, 80] and validation[1]["val/nll"] < validation[0]["val/nll"]
    assert validation[1]["val/bits_per_dim"] == pytest.approx(validation[1]["val/nll"] * 64 / 0.6931471805599453
                                                              / (16 * 16 * 3))

    model = tamer.load(tmp_path / "model")
    assert isinstance(model, tamer.Transformer)
    assert model.config.code_shape == (8, 8)
    assert model.config.gpt.block_size == 64 and model.config.gpt.vocab_size == 32 + 10 + 1  # + the null class
    source = tamer.load(stages["image"])
    assert all(torch.equal(model.first_stage_model.state_dict()[k], v) for k, v in source.state_dict().items())
    # Training state holds the GPT (and its EMA) only; the frozen VQGAN lives in the exported model folder alone.
    checkpoint = tmp_path / "checkpoints" / "step-00000080"
    for name in ("gpt.safetensors", "ema.safetensors"):
        assert not any("first_stage" in k or "encoder" in k for k in load_file(checkpoint / name)), name
    assert sorted(p.name for p in (tmp_path / "images").iterdir())[0] == "step-00000001-samples.png"
    resolved = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert resolved["code_shape"] == [8, 8] and resolved["gpt"]["block_size"] == 64


def test_frozen_stage_and_optimizer_groups(stages, tmp_path):
    config = load_run_config(PRESET, micro(stages, "model.conditioning.classifier_free=false", "cond_dropout=0",
                                           "pkeep=0.5"))
    model = build_transformer(config, ProceduralShapes(16, 8))
    task = TransformerTask(model, pkeep=config.pkeep)
    assert set(task.modules()) == {"gpt"} and model.config.gpt.vocab_size == 32 + 10
    assert model.transformer.training and not model.first_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())

    optimizer = Trainer(task, config.train, ProceduralShapes(16, 8), tmp_path).optimizers["gpt"]
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.transformer.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "head.weight" in decayed and "blocks.0.attn.query.weight" in decayed and "blocks.0.mlp.0.weight" in decayed
    assert {"pos_emb", "tok_emb.weight", "blocks.0.ln1.weight", "blocks.0.attn.query.bias", "ln_f.bias"} <= kept
    assert len(decay_groups(model.transformer, 0.1)[0]["params"]) == len(decay["params"])

    # The task's loss (the GPT may be a DDP wrapper) is the model's own forward loss.
    batch = {k: torch.stack([ProceduralShapes(16, 8)[i][k] for i in range(4)]) for k in ("image", "label")}
    codes, cond = task.tokens(batch)
    model.eval()  # no dropout, for the comparison
    _, expected = model(codes, cond)
    task.pkeep, task.cond_dropout, pkeep = 1.0, 0.0, task.pkeep
    _, loss, _ = next(task.step({"gpt": model.transformer}, batch, 0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    task.pkeep = pkeep
    model.train()
    name, loss, logs = next(task.step({"gpt": model.transformer}, batch, 0))
    loss.backward()
    assert name == "gpt" and torch.isfinite(loss) and "bits_per_token" in logs
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert not model.first_stage_model.training


def test_killed_run_resumes_on_the_same_trajectory(stages, tmp_path):
    args = [sys.executable, str(ROOT / "tests/scripts/train_until_killed.py"), "train", "transformer",
            "--config", str(PRESET), *micro(stages), "train.steps=8", "train.checkpoint_every=3",
            "train.grad_accum=2", "train.ema_decay=0.9", "train.ema_auto=false", "pkeep=0.8", "cond_dropout=0.3",
            "data.flip=true", "cache_codes=true", "data.length=64", "val_data=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, kill_at, *more):
        return subprocess.run(args + ["--out", str(out), *more], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**env, "TAMER_TEST_KILL_AT": str(kill_at)})

    straight = run(tmp_path / "straight", 0)
    assert straight.returncode == 0, straight.stderr
    killed = run(tmp_path / "killed", 5)
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["step-00000003"]
    resumed = run(tmp_path / "killed", 0, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "code cache: reusing" in resumed.stdout and "resumed from" in resumed.stdout

    a, b = records(tmp_path / "straight")[0], records(tmp_path / "killed")[0]
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-6, abs=1e-9), step
    x, y = tamer.load(tmp_path / "straight" / "model"), tamer.load(tmp_path / "killed" / "model")
    assert all(torch.allclose(y.state_dict()[k], v, atol=1e-7) for k, v in x.state_dict().items())


def test_two_process_torchrun_matches_one_process(stages, tmp_path):
    common = ["train", "transformer", "--config", str(PRESET), *micro(stages), "train.steps=3", "train.lr=1e-3",
              "data.length=32", "val_data=null", "data.flip=false", "cache_codes=true", "cond_dropout=0",
              "model.conditioning.classifier_free=false", "model.gpt.embd_pdrop=0", "model.gpt.resid_pdrop=0",
              "model.gpt.attn_pdrop=0", "train.log_every=1",
              "train.precision=fp32"]  # the tolerance below is fp32 rounding (auto may pick bf16 here)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args, out in (([sys.executable, "-m", "tamer.cli"], "one"),
                      ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                        "tamer.cli"], "two")):
        batch = "train.batch_size=4" if out == "one" else "train.batch_size=2"
        result = subprocess.run(args + common + [batch, "--out", str(tmp_path / out)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    one, two = tamer.load(tmp_path / "one" / "model"), tamer.load(tmp_path / "two" / "model")
    # The same global batch of 4 split over two ranks (rank 1 reads the code cache rank 0 wrote): measured 2e-7.
    assert max((two.state_dict()[k] - v).abs().max().item() for k, v in one.state_dict().items()) < 1e-5
    # The logged loss is the whole global batch's, averaged over the ranks, not rank 0's half.
    logged = {out: [json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()
                    if '"loss"' in line] for out in ("one", "two")}
    assert len(logged["one"]) == 3 and logged["two"] == pytest.approx(logged["one"], rel=1e-5)


def test_code_cache_is_reused_and_invalidated(stages, tmp_path, monkeypatch, capsys):
    import tamer.train.transformer_run as run_module

    calls = []
    encode = run_module.encode_dataset
    monkeypatch.setattr(run_module, "encode_dataset", lambda *a, **k: calls.append(1) or encode(*a, **k))
    first_stage = micro_vqgan(tmp_path / "vqgan")
    overrides = MICRO + [f"first_stage={first_stage}", "train.steps=1", "cache_codes=true", "data.flip=true",
                         "data.length=24", "val_data.length=8", f"cache_dir={tmp_path / 'codes'}"]
    train_transformer(load_run_config(PRESET, overrides), tmp_path / "a")
    assert len(calls) == 2  # train and val
    train_file = tmp_path / "codes" / "train.safetensors"
    key = read_fingerprint(train_file)

    cached = load_file(train_file)
    assert cached["codes"].shape == cached["codes_flipped"].shape == (24, 8, 8)
    assert cached["codes"].dtype == torch.int16 and cached["label"].shape == (24,)
    vqgan, data = tamer.load(first_stage), ProceduralShapes(16, 24, max_distractors=0)  # as the preset draws them
    images = torch.stack([data[i]["image"] for i in range(24)])
    with torch.no_grad():
        assert torch.equal(cached["codes"].long(), vqgan.encode(images))
        assert torch.equal(cached["codes_flipped"].long(), vqgan.encode(images.flip(-1)))
    assert torch.equal(cached["label"], torch.stack([data[i]["label"] for i in range(24)]))

    capsys.readouterr()
    train_transformer(load_run_config(PRESET, overrides), tmp_path / "b")  # another run, same VQGAN and data
    assert len(calls) == 2 and "code cache: reusing" in capsys.readouterr().out

    micro_vqgan(tmp_path / "vqgan", seed=1)  # the first stage changes in place
    train_transformer(load_run_config(PRESET, overrides), tmp_path / "c")
    assert len(calls) == 4 and read_fingerprint(train_file) != key
    assert "the first stage or the data changed" in capsys.readouterr().out

    train_transformer(load_run_config(PRESET, overrides + ["data.length=16"]), tmp_path / "d")  # the data changes
    assert len(calls) == 5 and load_file(train_file)["codes"].shape[0] == 16


@pytest.mark.parametrize("cache", [False, True])
def test_segmentation_conditional_path_trains(stages, tmp_path, cache):
    config = load_run_config(ROOT / "configs/transformer_tiny_seg.yaml", micro(
        stages, f"cond_stage={stages['seg']}", "train.steps=2", "train.image_every=2", "train.val_every=2",
        f"cache_codes={str(cache).lower()}", "data.length=16", "val_data.length=8"))
    logs = train_transformer(config, tmp_path)
    assert torch.isfinite(torch.tensor(logs["loss"]))
    model = tamer.load(tmp_path / "model")
    assert model.config.conditioning.kind == "spatial" and model.config.gpt.block_size == 64 + 64 - 1
    assert model.config.gpt.vocab_size == 32 + 32  # image codebook, then the segmentation codebook
    segmentation = ProceduralShapes(16, 2)[0]["segmentation"][None]
    assert model.sample_codes(segmentation, 1, seed=0).shape == (1, 8, 8)
    assert (tmp_path / "images" / "step-00000002-samples.png").is_file()
    assert records(tmp_path)[1][-1]["val/nll"] > 0
    if cache:
        assert load_file(tmp_path / "codes" / "train.safetensors")["cond_tokens"].shape == (16, 8, 8)


def test_segmentation_vqgan_preset_trains(tmp_path):
    from tamer.train.vqgan_run import load_run_config as vqgan_config
    from tamer.train.vqgan_run import train_vqgan

    config = vqgan_config(ROOT / "configs/vqgan_tiny_seg.yaml", [
        "model.autoencoder.ch_mult=[1,2]", "model.autoencoder.resolution=16", "data.size=16", "data.length=64",
        "val_data.size=16", "val_data.length=8", "train.steps=2", "train.batch_size=4", "train.val_every=2",
        "train.val_batches=1", "train.image_every=2", "train.checkpoint_every=2"])
    logs = train_vqgan(config, tmp_path)
    assert logs["pixel_loss"] > 0
    validation = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                  if "val/psnr" in line]
    assert 0.0 <= validation[-1]["val/label_accuracy"] <= 1.0
    model = tamer.load(tmp_path / "model")
    assert model.config.autoencoder.in_channels == 11 and model.config.colorize_nlabels == 11


def test_bad_configs_name_the_key(stages, tmp_path, capsys):
    def error(*overrides):
        with pytest.raises(ConfigError) as caught:
            config = load_run_config(PRESET, micro(stages, *overrides))
            train_transformer(config, tmp_path / "run")
        return str(caught.value)

    assert "model.gpt.n_layr: unknown key (did you mean 'n_layer'?)" in error("model.gpt.n_layr=2")
    assert error("model.gpt.block_size=32").startswith(
        "model.gpt.block_size: 32 is too small; 1 condition + 64 image tokens need 64")
    assert error("model.gpt.vocab_size=40").startswith("model.gpt.vocab_size: 40 is too small")
    assert error("first_stage=null").startswith("first_stage: required")
    assert error(f"first_stage={tmp_path / 'nowhere'}").startswith(f"first_stage: {tmp_path / 'nowhere'} does not")
    assert error("model.conditioning.classifier_free=false").startswith("cond_dropout: needs")
    assert error("model.conditioning.kind=spatial", "model.conditioning.key=segmentation").startswith(
        "cond_stage: required")
    assert error("data.size=17", "val_data=null").startswith("data.size: 17 pixels is not a multiple")
    assert error("model.conditioning.num_classes=3").startswith("model.conditioning.num_classes: 3 is too small")
    assert "model.conditioning.key: the data items have no 'depht'" in error("model.conditioning.key=depht")
    assert error("cache_codes=true", "data.random_crop=true").startswith("cache_codes: data.random_crop")
    assert cli(["train", "transformer", "--config", str(PRESET), *micro(stages), "train.stpes=3",
                "--out", str(tmp_path / "cli")]) == 1
    assert "train.stpes: unknown key (did you mean 'steps'?)" in capsys.readouterr().err


def test_cli_trains_and_writes_a_loadable_model(stages, tmp_path, capsys):
    assert cli(["train", "transformer", "--config", str(PRESET), *micro(stages), "train.steps=2",
                "data.length=16", "val_data=null", "--out", str(tmp_path)]) == 0
    assert "done: model in" in capsys.readouterr().out
    model = tamer.load(tmp_path / "model")
    assert model.sample(torch.tensor([3]), 1, seed=0).shape == (1, 3, 16, 16)


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("transformer_*.yaml")), ids=lambda p: p.stem)
def test_presets_are_valid(preset):
    config = load_run_config(preset)
    assert config.train.steps > 0 and config.first_stage
    assert config.train.betas == (0.9, 0.95)


@pytest.mark.slow
def test_tiny_class_preset_learns(tmp_path):
    """The full CPU preset on the tiny VQGAN (runs/vqgan-tiny/model, trained with configs/vqgan_tiny_cpu.yaml).

    Measured with the preset's earlier recipe (4 layers × 192, lr 1e-3, 1200 steps; one thread, the other core
    busy): 10 min 24 s after 3 min of encoding; held-out NLL 4.17 / 4.01 / 3.95 nats per token at steps 400 / 800 /
    1200 (uniform over 256 codes: 5.55). The preset is now 2 layers × 128 at lr 3e-3 for 2400 steps.
    """
    first_stage = ROOT / "runs/vqgan-tiny/model"
    if not first_stage.is_dir():
        pytest.skip("train runs/vqgan-tiny first: tamer train vqgan --config configs/vqgan_tiny_cpu.yaml")
    train_transformer(load_run_config(PRESET, [f"first_stage={first_stage}"]), tmp_path)
    steps, validation = records(tmp_path)
    assert [v["step"] for v in validation] == list(range(400, 2401, 400))
    assert validation[-1]["val/nll"] < validation[0]["val/nll"] - 0.1
    assert validation[-1]["val/nll"] < 4.1  # uniform over 256 codes: 5.55 nats/token


def test_the_best_validated_step_is_exported_beside_the_last(stages, tmp_path, monkeypatch, capsys):
    # Scripted held-out NLL: best at step 4, worse at the end (overfitting), so model/ must be step 4's model.
    scripted = iter([3.0, 2.0, 2.5])
    real = TransformerTask.validate

    def validate(self, model, batches):
        return {**real(self, model, batches), "nll": next(scripted)}

    monkeypatch.setattr(TransformerTask, "validate", validate)
    config = load_run_config(PRESET, micro(stages, "train.steps=6", "train.val_every=2", "train.checkpoint_every=2",
                                           "train.keep_checkpoints=5", "cache_codes=false", "train.lr=3e-3"))
    train_transformer(config, tmp_path)
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "best.json").read_text()) == {"step": 4, "metric": "nll", "value": 2.0,
                                                                "mode": "min"}
    exported = load_file(tmp_path / "model" / "model.safetensors")
    at_best = load_file(tmp_path / "checkpoints" / "step-00000004" / "model" / "model.safetensors")
    last = load_file(tmp_path / "checkpoints" / "step-00000006" / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], at_best[k]) for k in at_best)
    assert not all(torch.equal(exported[k], last[k]) for k in last)  # the last step really is another model
    assert f"exported step 4 of 6 to {tmp_path / 'model'}: it has the best held-out nll 2 against 2.5 at step 6" in out
    assert "step-00000006/model" in out


def test_without_validation_the_last_step_is_exported(stages, tmp_path, capsys):
    config = load_run_config(PRESET, micro(stages, "train.steps=2", "val_data=null", "cache_codes=false"))
    train_transformer(config, tmp_path)
    assert f"exported the last step, 2, to {tmp_path / 'model'}: no val_data to choose by" in capsys.readouterr().out
    assert not (tmp_path / "best").exists()


def test_ema_is_turned_off_when_its_horizon_outlasts_the_run(stages, tmp_path, capsys):
    from tamer.train.config import TrainConfig, effective_ema_decay

    decay, note = effective_ema_decay(TrainConfig(steps=600, ema_decay=0.999))  # 1000 steps > 150
    assert decay is None and "lower it to 0.9933 or less, or set train.ema_auto=false" in note
    assert effective_ema_decay(TrainConfig(steps=4000, ema_decay=0.999)) == (0.999, None)  # 1000 = a quarter
    assert effective_ema_decay(TrainConfig(steps=600, ema_decay=0.9999, ema_auto=False)) == (0.9999, None)
    config = load_run_config(PRESET, micro(stages, "train.steps=3", "train.ema_decay=0.9999", "val_data=null",
                                           "cache_codes=false"))
    train_transformer(config, tmp_path)
    out = capsys.readouterr().out
    assert ("note: train.ema_decay: 0.9999 averages over about 10,000 steps, more than a quarter of this run's 3; "
            "EMA is off") in out
    assert "(EMA weights)" not in out
    assert not (tmp_path / "checkpoints" / "step-00000003" / "ema.safetensors").exists()
