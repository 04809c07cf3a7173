"""Importing CompVis checkpoints: Lightning layout, no pytorch_lightning, nothing executed from the pickle."""

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

import tamer
from oracle import original_autoencoder, quiet
from tamer.checkpoints import CheckpointError
from tamer.cli import main as cli
from tamer.compat.safe_load import UnsafeCheckpointError, safe_torch_load
from tamer.config import ConfigError, from_dict
from tamer.nn.autoencoder import AutoencoderConfig

CONFIGS = Path(__file__).parent / "data" / "taming"


def original_vqmodel(model_config: dict) -> torch.nn.Module:
    """A module with the attributes of the original VQModel/GumbelVQ, built from the original's own blocks."""
    params = model_config["params"]
    ddconfig = params["ddconfig"]
    model = torch.nn.Module()
    model.encoder, model.decoder = original_autoencoder(from_dict(AutoencoderConfig, ddconfig))
    if model_config["target"].endswith("GumbelVQ"):
        model.quantize = GumbelQuantize(ddconfig["z_channels"], params["embed_dim"], n_embed=params["n_embed"],
                                        kl_weight=params["kl_weight"])
    else:
        model.quantize = quiet(VectorQuantizer2, params["n_embed"], params["embed_dim"], beta=0.25)
    model.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], params["embed_dim"], 1)
    model.post_quant_conv = torch.nn.Conv2d(params["embed_dim"], ddconfig["z_channels"], 1)
    if params.get("colorize_nlabels"):
        model.register_buffer("colorize", torch.randn(3, params["colorize_nlabels"], 1, 1))
    return model


def fake_lightning_class(monkeypatch, module_name: str, class_name: str) -> type:
    """A class importable under a Lightning module name while the checkpoint is written (Lightning is not installed)."""
    parts = module_name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    cls = type(class_name, (), {"__module__": module_name})
    setattr(sys.modules[module_name], class_name, cls)
    return cls


def write_lightning_ckpt(path: Path, state_dict: dict, monkeypatch) -> Path:
    """A ``.ckpt`` in the layout PyTorch Lightning 1.x wrote for the released CompVis models."""
    with monkeypatch.context() as patch:
        checkpoint_cls = fake_lightning_class(patch, "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint")
        state_cls = fake_lightning_class(patch, "pytorch_lightning.trainer.states", "RunningStage")
        loop_state = state_cls()
        loop_state.stage, loop_state.batches = "train", [1, 2]
        torch.save({
            "epoch": 7, "global_step": 123, "pytorch-lightning_version": "1.0.8",
            "callbacks": {checkpoint_cls: {"monitor": "val/rec_loss", "best_model_score": torch.tensor(0.31),
                                           "best_model_path": "logs/x/checkpoints/last.ckpt"}},
            "loops": loop_state,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "state_dict": state_dict,
        }, path)
    assert "pytorch_lightning" not in sys.modules
    return path


def with_loss_weights(state: dict) -> dict:
    state = dict(state)
    state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    return state


@pytest.mark.parametrize("name", ["vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_gumbel_f8"])
def test_released_configs_round_trip(name, tmp_path, monkeypatch):
    yaml_path = CONFIGS / f"{name}.yaml"
    original = original_vqmodel(yaml.safe_load(yaml_path.read_text())["model"])
    state = original.state_dict()
    ckpt = write_lightning_ckpt(tmp_path / "last.ckpt", with_loss_weights(state), monkeypatch)

    model = tamer.load(ckpt, config=yaml_path)
    ours = model.state_dict()
    assert set(ours) == set(state)  # loss.* dropped, nothing else missing or added
    assert all(torch.equal(ours[k], state[k]) for k in state)
    assert model.config.quantizer.kind == ("gumbel" if "gumbel" in name else "vq")
    assert model.config.quantizer.legacy_loss is (model.config.quantizer.kind == "vq")  # the original's weighting

    assert cli(["convert", str(ckpt), "--config", str(yaml_path), "--out", str(tmp_path / "native")]) == 0
    reloaded = tamer.load(tmp_path / "native")
    assert reloaded.config == model.config
    assert all(torch.equal(v, ours[k]) for k, v in reloaded.state_dict().items())


def test_segmentation_vqgan_keeps_colorize(tmp_path, monkeypatch):
    yaml_path = CONFIGS / "sflckr_segmentation_vqgan.yaml"
    original = original_vqmodel(yaml.safe_load(yaml_path.read_text())["model"])
    ckpt = write_lightning_ckpt(tmp_path / "seg.ckpt", original.state_dict(), monkeypatch)
    model = tamer.load(ckpt, config=yaml_path)
    assert torch.equal(model.colorize, original.colorize)
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 182, (1, 32, 32)), 182).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        rgb = model.to_rgb(model(one_hot * 2 - 1).reconstruction)
    assert rgb.shape == (1, 3, 32, 32) and rgb.min() >= -1 and rgb.max() <= 1


def test_project_yaml_found_in_the_run_layout(tmp_path, monkeypatch):
    run = tmp_path / "2020-11-09T13-31-51_sflckr"
    (run / "checkpoints").mkdir(parents=True)
    (run / "configs").mkdir()
    source = CONFIGS / "sflckr_segmentation_vqgan.yaml"
    (run / "configs" / "2020-11-09T13-31-51-project.yaml").write_text(source.read_text())
    original = original_vqmodel(yaml.safe_load(source.read_text())["model"])
    ckpt = write_lightning_ckpt(run / "checkpoints" / "last.ckpt", original.state_dict(), monkeypatch)
    assert tamer.load(ckpt).config.colorize_nlabels == 182


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("where", ["state_dict", "callbacks"])
def test_malicious_pickle_is_refused_and_nothing_runs(where, tmp_path):
    marker = tmp_path / "marker"
    payload = {"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "callbacks": {}}
    payload[where]["evil"] = RunsCode(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path)
    (tmp_path / "project.yaml").write_text((CONFIGS / "vqgan_imagenet_f16_1024.yaml").read_text())

    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        tamer.load(path, config=tmp_path / "project.yaml")
    assert cli(["convert", str(path), "--config", str(tmp_path / "project.yaml"), "--out", str(tmp_path / "o")]) == 1
    assert not marker.exists()


def test_safe_load_keeps_lightning_objects_inert(tmp_path, monkeypatch):
    ckpt = write_lightning_ckpt(tmp_path / "x.ckpt", {"w": torch.ones(2)}, monkeypatch)
    data = safe_torch_load(ckpt)
    (key, value), = data["callbacks"].items()
    assert key.__name__ == "ModelCheckpoint" and value["best_model_score"].item() == pytest.approx(0.31)
    assert data["loops"].state == {"stage": "train", "batches": [1, 2]}
    assert "pytorch_lightning" not in sys.modules


def test_import_errors_name_the_problem(tmp_path, monkeypatch):
    source = yaml.safe_load((CONFIGS / "sflckr_segmentation_vqgan.yaml").read_text())
    original = original_vqmodel(source["model"])
    ckpt = write_lightning_ckpt(tmp_path / "m.ckpt", original.state_dict(), monkeypatch)

    bad = yaml.safe_load((CONFIGS / "sflckr_segmentation_vqgan.yaml").read_text())
    bad["model"]["params"]["ddconfig"]["ch_mul"] = [1, 2]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"ddconfig\.ch_mul: unknown key \(did you mean 'ch_mult'\?\)"):
        tamer.load(ckpt, config=tmp_path / "bad.yaml")

    wrong = yaml.safe_load((CONFIGS / "sflckr_segmentation_vqgan.yaml").read_text())
    wrong["model"]["params"]["n_embed"] = 128
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight: file \(64, 16\) vs model \(128, 16\)"):
        tamer.load(ckpt, config=tmp_path / "wrong.yaml")

    with pytest.raises(CheckpointError, match="no project.yaml found"):
        tamer.load(ckpt)
