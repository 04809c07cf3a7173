"""Command-line overrides (``key.sub=value``) and atomic file writes."""

import os
import stat

import pytest

from tamer.atomic import atomic_write
from tamer.config import ConfigError, parse_overrides


def test_overrides_nest_and_parse_values_as_yaml():
    assert parse_overrides(["train.steps=100", "train.betas=[0.5, 0.9]", "data.plain=true", "name=run 1"]) == {
        "train": {"steps": 100, "betas": [0.5, 0.9]}, "data": {"plain": True}, "name": "run 1"}


def test_a_later_override_replaces_a_whole_section():
    assert parse_overrides(["val_data.size=16", "val_data=null"]) == {"val_data": None}


@pytest.mark.parametrize("pairs, message", [
    (["train.steps"], "expected key=value"),
    (["train..steps=3"], "empty part"),
    (["train.betas=[0.5, 0.9"], "train.betas: the value '\\[0.5, 0.9' is not valid YAML"),
    (["train=3", "train.steps=100"], "train.steps: train was already set"),
])
def test_bad_overrides_name_the_key(pairs, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(pairs)


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "weights.bin", lambda path: path.write_bytes(b"123"))
    finally:
        os.umask(mask)
    written = tmp_path / "weights.bin"
    assert written.read_bytes() == b"123"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary file left behind


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def fail(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_typos_in_python_built_configs_say_did_you_mean():
    from tamer import VQGANConfig
    from tamer.config import ConfigError
    from tamer.nn.autoencoder import AutoencoderConfig
    from tamer.nn.quantize import QuantizerConfig
    from tamer.train.config import TrainConfig

    with pytest.raises(ConfigError, match=r"^QuantizerConfig\.num_code: unknown key \(did you mean 'num_codes'\?\)"):
        QuantizerConfig(num_code=16)
    with pytest.raises(TypeError, match=r"AutoencoderConfig\.ch_mul: unknown key \(did you mean 'ch_mult'\?\)"):
        AutoencoderConfig(ch_mul=(1, 2))  # still a TypeError, as Python's own
    with pytest.raises(ConfigError, match=r"TrainConfig\.stpes: unknown key \(did you mean 'steps'\?\)"):
        TrainConfig(stpes=3)
    config = VQGANConfig(quantizer=QuantizerConfig(num_codes=16))  # right keys, positional or not, still work
    assert config.quantizer.num_codes == 16 and AutoencoderConfig(32).ch == 32


def test_run_configs_take_preset_names_from_any_folder(tmp_path, monkeypatch):
    from tamer.train.transformer_run import load_run_config as transformer_config
    from tamer.train.vqgan_run import load_run_config as vqgan_config

    monkeypatch.chdir(tmp_path)  # outside a checkout: no configs/ here
    assert vqgan_config("vqgan_tiny_cpu", ["train.steps=7"]).train.steps == 7
    assert vqgan_config("configs/vqgan_custom.yaml").data.size is None  # follows the data
    assert transformer_config("transformer_custom_classes").model.conditioning["kind"] == "class"
    with pytest.raises(ConfigError, match="neither a file nor a shipped preset"):
        vqgan_config("vqgan_tiny_cpux")


def test_each_stage_brings_the_original_optimizer_defaults():
    from tamer.train.transformer_run import load_run_config as transformer_config
    from tamer.train.vqgan_run import load_run_config as vqgan_config

    vqgan = vqgan_config(None).train
    assert (vqgan.lr, vqgan.betas, vqgan.weight_decay) == (4.5e-6, (0.5, 0.9), 0.0)
    gpt = transformer_config(None, ["first_stage=some/vqgan"]).train
    assert (gpt.lr, gpt.betas, gpt.weight_decay) == (3e-4, (0.9, 0.95), 0.01)
    assert vqgan_config(None, ["train.lr=2e-4"]).train.betas == (0.5, 0.9)  # a value given keeps the other defaults
    assert vqgan_config("vqgan_tiny_cpu").train.lr == 1e-3  # a preset's own value wins
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        vqgan_config(None, ["train=5"])


def test_epochs_decide_the_steps_from_the_data_size():
    from tamer.train.config import TrainConfig, steps_for_data

    config = TrainConfig(steps=10, epochs=2.5, batch_size=8, grad_accum=2)
    resolved, note = steps_for_data(config, items=1000, world_size=2)
    assert resolved.steps == 79 and "-> 79 steps" in note  # ceil(2.5 × 1000 / 32)
    assert steps_for_data(TrainConfig(steps=10), 1000) == (TrainConfig(steps=10), None)
    assert steps_for_data(TrainConfig(epochs=0.001, batch_size=8), 10)[0].steps == 1
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="train.epochs"):
            TrainConfig(epochs=bad)
