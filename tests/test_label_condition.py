"""The ``labels`` condition: label maps read exactly at the code grid, trained, sampled and asked for by file."""

import numpy as np
import pytest
import torch

import tamer
from tamer.ar.conditioning import ConditioningConfig, build_condition_stage
from tamer.ar.generation import label_map_to_png
from tamer.cli import main
from tamer.config import ConfigError
from tamer.data import ProceduralShapes
from tamer.train.transformer_run import load_run_config, train_transformer
from test_train_transformer import MICRO, ROOT, micro_vqgan
from test_transformer import make_model

LABELS = {"kind": "labels", "key": "segmentation", "num_labels": 5, "label_factor": 2}


def stage(num_labels: int = 5, factor: int = 4, offset: int = 100):
    config = ConditioningConfig(kind="labels", key="segmentation", num_labels=num_labels, label_factor=factor)
    return build_condition_stage(config, offset)


def test_each_cell_takes_its_most_frequent_label_and_ties_the_lower():
    maps = torch.zeros(2, 8, 8, dtype=torch.long)
    maps[0, :4, :4] = 3            # a whole cell
    maps[0, 4:7, 4:] = 2           # 12 of 16 pixels in the two lower-right cells
    maps[1, :2, :4] = 4            # 8 of 16: a tie with background, which is the lower label
    maps[1, :3, 4:] = 1            # 12 of 16
    tokens = stage().tokens(maps, 2)
    assert (tokens - 100).tolist() == [[[3, 0], [0, 2]], [[0, 1], [0, 0]]]
    assert stage().tokens(maps[:, None], 2).equal(tokens)  # B×1×H×W as well


def test_the_map_shown_to_the_transformer_is_the_cells_at_pixel_resolution():
    cells = torch.randint(0, 5, (3, 4, 6), generator=torch.Generator().manual_seed(0))
    maps = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)
    s = stage()
    assert s.decode_labels(s.tokens(maps, 3)).equal(maps)  # a map that is constant per cell comes back exactly
    preview = s.decode(s.tokens(maps, 3))
    assert preview.shape == (3, 3, 16, 24) and float(preview.min()) >= -1 and float(preview.max()) <= 1


def test_bad_label_maps_are_named():
    s = stage()
    with pytest.raises(ValueError, match="label 5 is outside 0..4"):
        s.tokens(torch.full((1, 8, 8), 5), 1)
    with pytest.raises(ValueError, match="10×8 is not a multiple of the 4-pixel grid"):
        s.tokens(torch.zeros(1, 10, 8, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="integer labels"):
        s.tokens(torch.rand(1, 8, 8), 1)
    with pytest.raises(ValueError, match="a labels condition needs at least one label"):
        ConditioningConfig(kind="labels", key="segmentation")


def test_guidance_has_a_null_id_past_the_labels():
    config = ConditioningConfig(kind="labels", key="segmentation", num_labels=11, classifier_free=True)
    assert config.gpt_vocab_size(512) == 512 + 11 + 1
    assert build_condition_stage(config, 512).null_token == 523


@pytest.mark.parametrize("cache", [False, True])
def test_the_labels_preset_trains_samples_beyond_its_size_and_round_trips(tmp_path, cache):
    first_stage = micro_vqgan(tmp_path / "vqgan")  # f2: 16×16 images -> 8×8 codes
    config = load_run_config(ROOT / "configs/transformer_tiny_labels.yaml", MICRO + [
        f"first_stage={first_stage}", "train.steps=2", "train.image_every=2", "train.val_every=2",
        f"cache_codes={str(cache).lower()}", "data.length=16", "val_data.length=8"])
    logs = train_transformer(config, tmp_path / "run")
    assert torch.isfinite(torch.tensor(logs["loss"]))
    model = tamer.load(tmp_path / "run" / "model")
    c = model.config.conditioning
    assert (c.kind, c.num_labels, c.label_factor) == ("labels", 11, 2)  # the factor follows the first stage
    assert model.config.gpt.block_size == 64 + 64 - 1 and model.config.gpt.vocab_size == 32 + 11
    maps = torch.stack([ProceduralShapes(32, 2, seed=5)[k]["segmentation"] for k in range(2)])
    codes = model.sample_codes(maps, 2, seed=0, code_shape=(16, 16))  # 32×32 maps: four times the trained area
    assert codes.shape == (2, 16, 16) and int(codes.max()) < 32
    assert (tmp_path / "run" / "images" / "step-00000002-samples.png").is_file()


def test_a_label_factor_other_than_the_first_stages_is_refused(tmp_path):
    config = load_run_config(ROOT / "configs/transformer_tiny_labels.yaml", MICRO + [
        f"first_stage={micro_vqgan(tmp_path / 'vqgan')}", "model.conditioning.label_factor=4", "train.steps=1"])
    with pytest.raises(ConfigError, match="label_factor: 4 must equal the first stage's downsampling factor 2"):
        train_transformer(config, tmp_path / "run")


def test_tamer_sample_reads_a_label_map_file(tmp_path, capsys):
    make_model(LABELS, code_shape=(4, 4)).save(tmp_path / "labels")
    label_map_to_png(torch.randint(0, 5, (8, 8)), tmp_path / "map.png")
    assert main(["sample", "--model", str(tmp_path / "labels"), "--cond", str(tmp_path / "map.png"), "-n", "2",
                 "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "codes.npy").shape == (2, 4, 4)
    label_map_to_png(torch.full((8, 8), 7), tmp_path / "bad.png")
    assert main(["sample", "--model", str(tmp_path / "labels"), "--cond", str(tmp_path / "bad.png"),
                 "--out", str(tmp_path / "bad")]) == 1
    assert "bad.png: label 7 is beyond the model's 5 labels" in capsys.readouterr().err
