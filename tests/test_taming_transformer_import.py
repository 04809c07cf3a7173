"""Importing CompVis stage-2 checkpoints (Net2NetTransformer), with the original class itself as the oracle."""

import contextlib
import importlib
import resource
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import tamer
from oracle import quiet
from tamer.ar.sampling import SamplingSettings
from tamer.checkpoints import CheckpointError
from tamer.cli import main as cli
from tamer.compat.taming_transformer import transformer_config_from_taming
from tamer.config import ConfigError
from test_taming_import import write_lightning_ckpt

CONFIGS = Path(__file__).parent / "data" / "taming"
BATCH = 2


def fixture(name: str) -> tuple[Path, dict]:
    path = CONFIGS / f"transformer_{name}.yaml"
    return path, yaml.safe_load(path.read_text())


def _instantiate(config: dict):
    """The original's ``instantiate_from_config``; DummyLoss (no weights) stands in as Identity, as the real one
    imports the LPIPS module and with it ``requests``."""
    if config["target"] == "taming.modules.losses.DummyLoss":
        return torch.nn.Identity()
    module, name = config["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config.get("params", {}))


@contextlib.contextmanager
def original_classes():
    """Import ``taming.models.cond_transformer`` with stubs for what it needs and is not installed
    (pytorch_lightning, taming.main); every module imported meanwhile is removed again afterwards."""
    before = set(sys.modules)
    lightning = types.ModuleType("pytorch_lightning")
    lightning.LightningModule = torch.nn.Module
    main = types.ModuleType("taming.main")
    main.instantiate_from_config = _instantiate
    sys.modules.update({"pytorch_lightning": lightning, "taming.main": main})
    try:
        yield importlib.import_module("taming.models.cond_transformer")
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def original_net2net(model_config: dict) -> torch.nn.Module:
    """The original Net2NetTransformer with random weights; the GPT's are spread out so greedy choices have no
    near-ties."""
    with original_classes() as cond_transformer:
        model = quiet(cond_transformer.Net2NetTransformer, **model_config["params"])
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if name in ("pos_emb", "tok_emb.weight") else 0.1))
    return model.eval()


def import_original(name: str, tmp_path: Path, monkeypatch, state_edit=None, **load_kwargs):
    """(original, tamer model) for the fixture ``name``, through a Lightning ``.ckpt``."""
    yaml_path, document = fixture(name)
    original = original_net2net(document["model"])
    state = original.state_dict()
    if state_edit is not None:
        state = state_edit(dict(state))
    ckpt = write_lightning_ckpt(tmp_path / f"{name}.ckpt", state, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an inferred code grid; tested on its own
        return original, tamer.load(ckpt, config=yaml_path, **load_kwargs)


def condition_for(name: str) -> torch.Tensor | None:
    """A condition batch as both models read it."""
    if name == "unconditional":
        return None
    if name == "class":
        return torch.tensor([3, 7])
    if name == "segmentation":
        labels = torch.randint(0, 6, (BATCH, 32, 32))
        return F.one_hot(labels, 6).permute(0, 3, 1, 2).float()
    if name == "first_stage":
        return torch.rand(BATCH, 3, 32, 32) * 2 - 1
    if name == "coord":
        return torch.rand(BATCH, 1, 32, 32)
    raise KeyError(name)


ORACLE_CASES = {"unconditional": ("none", (8, 8), "raster"), "class": ("class", (8, 8), "zcurve"),
                "segmentation": ("spatial", (8, 8), "raster"), "first_stage": ("spatial", (8, 8), "subsample"),
                "coord": ("coord", (8, 8), "alternate")}


@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_logits_and_greedy_samples_match_the_original(name, tmp_path, monkeypatch):
    original, model = import_original(name, tmp_path, monkeypatch)
    kind, code_shape, order = ORACLE_CASES[name]
    assert isinstance(model, tamer.Transformer)
    assert (model.conditioning.kind, model.config.code_shape, model.config.token_order) == (kind, code_shape, order)
    assert model.conditioning.token_offset == (5 if name == "unconditional" else 0)

    images = torch.rand(BATCH, 3, 32, 32) * 2 - 1
    condition = condition_for(name)
    theirs_condition = images if condition is None else condition
    with torch.no_grad():
        ref_logits, ref_targets = original(images, theirs_condition)
        codes = model.encode_images(images)
        logits, _ = model(codes, model.condition_tokens(condition, BATCH))
    assert torch.equal(model.sequence(codes), ref_targets)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)

    # Greedy: the original's sample(..., sample=False) re-runs the whole sequence per token; ours uses the KV cache.
    _, cond_indices = original.encode_to_c(theirs_condition)
    h, w = code_shape
    ref_tokens = original.sample(ref_targets[:, :0], cond_indices, steps=h * w, sample=False)
    ref_grid = original.permuter(ref_tokens, reverse=True).reshape(BATCH, h, w)
    grid = model.sample_codes(condition, BATCH, SamplingSettings(top_k=1))
    assert torch.equal(grid, ref_grid)
    assert len(ref_grid.unique()) > 4  # the greedy path is not a constant run


def test_weights_map_key_by_key(tmp_path, monkeypatch):
    original, model = import_original("segmentation", tmp_path, monkeypatch)
    theirs, ours = original.state_dict(), model.state_dict()
    renamed = {k.replace("cond_stage_model.", "cond_stage_model.model.", 1): v for k, v in theirs.items()
               if not k.endswith(".attn.mask")}
    assert set(renamed) == set(ours)
    assert all(torch.equal(ours[k], v) for k, v in renamed.items())
    assert torch.equal(model.cond_stage_model.model.colorize, original.cond_stage_model.colorize)


@pytest.mark.parametrize("trim", [False, True], ids=["both_prefixes", "first_stage_only"])
def test_first_stage_as_condition_stage(trim, tmp_path, monkeypatch):
    def drop_cond(state):
        return {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}

    original, model = import_original("first_stage", tmp_path, monkeypatch, state_edit=drop_cond if trim else None)
    assert "cond_stage_model.encoder.conv_in.weight" in original.state_dict()  # the original saves it twice
    assert model.conditioning.stage == model.config.first_stage and model.conditioning.downsample_size == 16
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(model.cond_stage_model.model.state_dict()[k], v)


@pytest.mark.parametrize("name", ["class", "first_stage", "coord"])  # zcurve, subsample, alternate
def test_permuter_buffers_are_checked(name, tmp_path, monkeypatch):
    def tamper(state):
        idx = state["permuter.forward_shuffle_idx"].clone()
        idx[[1, 2]] = idx[[2, 1]]
        state["permuter.forward_shuffle_idx"] = idx
        return state

    _, model = import_original(name, tmp_path, monkeypatch)  # the genuine buffer passes
    assert model.config.token_order == ORACLE_CASES[name][2]
    with pytest.raises(CheckpointError, match=r"'permuter\.forward_shuffle_idx' is not the \w+ order of a 8×8"):
        import_original(name, tmp_path, monkeypatch, state_edit=tamper)
    drop = lambda state: {k: v for k, v in state.items() if not k.startswith("permuter.")}  # noqa: E731
    with pytest.raises(CheckpointError, match=r"no 'permuter\.forward_shuffle_idx' buffer"):
        import_original(name, tmp_path, monkeypatch, state_edit=drop)


def test_permuter_buffers_with_an_identity_yaml_are_refused(tmp_path, monkeypatch):
    def add(state):
        state["permuter.forward_shuffle_idx"] = torch.arange(64)
        return state

    with pytest.raises(CheckpointError, match=r"permuter\.forward_shuffle_idx, but the project.yaml names no permuter"):
        import_original("segmentation", tmp_path, monkeypatch, state_edit=add)


def test_code_shape_is_inferred_with_a_warning_or_given(tmp_path, monkeypatch):
    yaml_path, document = fixture("segmentation")
    ckpt = write_lightning_ckpt(tmp_path / "m.ckpt", original_net2net(document["model"]).state_dict(), monkeypatch)
    with pytest.warns(UserWarning, match=r"inferred 8×8 .* block_size=128 after the spatial condition"):
        assert tamer.load(ckpt, config=yaml_path).config.code_shape == (8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tamer.load(ckpt, config=yaml_path, code_shape=(4, 8)).config.code_shape == (4, 8)
    with pytest.raises(ConfigError, match=r"code_shape: 9×9 codes after 81 condition tokens need block_size >= 161"):
        tamer.load(ckpt, config=yaml_path, code_shape=(9, 9))

    # `tamer convert --code-shape` passes it on, and the converted folder keeps it
    from tamer.cli import main as cli

    assert cli(["convert", str(ckpt), "--config", str(yaml_path), "--code-shape", "4x8", "--out",
                str(tmp_path / "converted")]) == 0
    assert tamer.load(tmp_path / "converted").config.code_shape == (4, 8)

    class_yaml, class_doc = fixture("class")
    class_ckpt = write_lightning_ckpt(tmp_path / "c.ckpt", original_net2net(class_doc["model"]).state_dict(),
                                      monkeypatch)
    with pytest.raises(ConfigError, match=r"code_shape: \(4, 4\) contradicts .*permuter_config.params \(H, W\)"):
        tamer.load(class_ckpt, config=class_yaml, code_shape=(4, 4))
    with pytest.raises(CheckpointError, match="code_shape is for CompVis transformer checkpoints"):
        tamer.load(tmp_path, code_shape=(8, 8))


def test_released_sflckr_config_translates():
    _, document = fixture("sflckr_released")
    with pytest.warns(UserWarning, match=r"inferred 16×16 .* block_size=512"):
        config = transformer_config_from_taming(document["model"], state={})
    assert (config.gpt.n_layer, config.gpt.n_embd, config.gpt.block_size) == (24, 1024, 512)
    assert config.code_shape == (16, 16) and config.image_size == (256, 256) and config.token_order == "raster"
    cond = config.conditioning
    assert (cond.kind, cond.key, cond.token_offset, cond.downsample_size) == ("spatial", "segmentation", 0, -1)
    assert cond.stage.colorize_nlabels == 182 and cond.stage.autoencoder.in_channels == 182


def test_unconditional_flag_overrides_the_cond_stage(tmp_path, monkeypatch):
    yaml_path, document = fixture("unconditional")
    ckpt = write_lightning_ckpt(tmp_path / "m.ckpt", original_net2net(document["model"]).state_dict(), monkeypatch)
    params = document["model"]["params"]
    params.update(unconditional=True, sos_token=0, cond_stage_key="image",
                  cond_stage_config={"target": "taming.models.dummy_cond_stage.DummyCondStage",
                                     "params": {"dummyparam": False}})  # as configs/custom_transformer.yaml
    (tmp_path / "custom.yaml").write_text(yaml.safe_dump(document))
    with pytest.warns(UserWarning, match="inferred 8×8"):
        model = tamer.load(ckpt, config=tmp_path / "custom.yaml")
    assert model.conditioning.kind == "none" and model.conditioning.token_offset == 0


def test_convert_round_trips_every_tensor(tmp_path, monkeypatch):
    yaml_path, document = fixture("segmentation")
    original = original_net2net(document["model"])
    ckpt = write_lightning_ckpt(tmp_path / "seg.ckpt", original.state_dict(), monkeypatch)
    with pytest.warns(UserWarning, match="inferred 8×8"):
        assert cli(["convert", str(ckpt), "--config", str(yaml_path), "--out", str(tmp_path / "native")]) == 0
        model = tamer.load(ckpt, config=yaml_path)
    reloaded = tamer.load(tmp_path / "native")
    assert isinstance(reloaded, tamer.Transformer) and reloaded.config == model.config
    ours, again = model.state_dict(), reloaded.state_dict()
    assert set(ours) == set(again) and all(torch.equal(again[k], v) for k, v in ours.items())


def _write_variant(tmp_path: Path, edit) -> Path:
    _, document = fixture("class")
    edit(document["model"]["params"])
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_bad_yaml_names_the_problem(tmp_path, monkeypatch):
    _, document = fixture("class")
    ckpt = write_lightning_ckpt(tmp_path / "m.ckpt", original_net2net(document["model"]).state_dict(), monkeypatch)

    def cond_target(params):
        params["cond_stage_config"] = {"target": "taming.models.dummy_cond_stage.DummyCondStage", "params": {}}

    with pytest.raises(ConfigError, match=r"cond_stage_config.target: 'taming.models.dummy_cond_stage.DummyCondStage'"
                                          r" is not a condition stage tamer can import"):
        tamer.load(ckpt, config=_write_variant(tmp_path, cond_target))

    def permuter(params):
        params["permuter_config"] = {"target": "taming.modules.transformer.permuter.SpiralOut",
                                     "params": {"H": 8, "W": 8}}

    with pytest.raises(ConfigError, match=r"permuter_config.target: 'taming.modules.transformer.permuter.SpiralOut'"):
        tamer.load(ckpt, config=_write_variant(tmp_path, permuter))

    def unknown(params):
        params["pkep"] = 0.5

    with pytest.raises(ConfigError, match=r"model.params.pkep: not a Net2NetTransformer parameter"):
        tamer.load(ckpt, config=_write_variant(tmp_path, unknown))

    def too_small(params):
        params["transformer_config"]["params"]["n_layer"] = 1

    with pytest.raises(CheckpointError, match=r"unexpected keys transformer\.blocks\.1\.attn\.key\.bias"):
        tamer.load(ckpt, config=_write_variant(tmp_path, too_small))

    def huge(params):  # 6.4 GB of float32 weights, were it built before the shapes are compared
        params["transformer_config"]["params"].update(n_layer=8, n_embd=4096)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(CheckpointError, match=r"does not fit Transformer: missing keys transformer\.blocks\.2\..*"
                                              r"wrong shapes .*file \(32, 32\) vs model \(4096, 4096\)"):
        tamer.load(ckpt, config=_write_variant(tmp_path, huge))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1 << 20  # less than 1 GiB more
    assert cli(["convert", str(ckpt), "--config", str(_write_variant(tmp_path, cond_target)),
                "--out", str(tmp_path / "o")]) == 1
