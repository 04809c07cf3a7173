"""Training on your own data, end to end at micro size: the custom presets (a VQGAN, then unconditional,
class-conditional and segmentation-conditional transformers) on folders of 64-pixel crops of scikit-image's
photos. Checked: the start summary, that the 64-pixel images are not enlarged to the presets' old 256, class names
kept in the model, the exported model being the best validated step, and curves.png a real picture."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tamer
from tamer import VQGAN, VQGANConfig
from tamer.cli import main as cli
from tamer.config import ConfigError
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.train.transformer_run import load_run_config as transformer_config
from tamer.train.transformer_run import train_transformer
from tamer.train.vqgan_run import load_run_config as vqgan_config
from tamer.train.vqgan_run import train_vqgan

skimage_data = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee"}  # class name -> scikit-image photo
SIDE, LABELS = 64, 4  # the label maps use 0..2; a fourth channel keeps the stage apart from RGB ones
#: f8: 64-pixel crops -> 8×8 codes; small enough that every run takes seconds
MICRO_VQGAN = [
    "model.autoencoder={ch: 16, ch_mult: [1, 2, 2, 2], num_res_blocks: 1, attn_resolutions: [], z_channels: 8, "
    "resolution: 64, norm_groups: 0}",
    "model.quantizer={num_codes: 32, embed_dim: 8}", "loss.perceptual_weight=0", "loss.disc_ndf=8",
    "loss.disc_num_layers=1", "loss.disc_start=1000",
]
MICRO_TRAIN = [
    "train.steps=6", "train.batch_size=4", "train.val_every=2", "train.checkpoint_every=2",
    "train.keep_checkpoints=3", "train.val_batches=2", "train.precision=fp32", "train.num_workers=0",
    "train.log_every=1", "train.image_every=1000", "train.warmup_steps=0", "train.lr=3e-3",
]
MICRO_GPT = ["model.gpt={n_layer: 1, n_head: 2, n_embd: 32}"]


def crops(photo: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    h, w = photo.shape[:2]
    tops, lefts = rng.integers(0, h - SIDE, count), rng.integers(0, w - SIDE, count)
    return [photo[t:t + SIDE, left:left + SIDE] for t, left in zip(tops, lefts)]


def labels_of(crop: np.ndarray) -> np.ndarray:
    """A segmentation of a crop: its brightness in three bands (dark, middle, bright)."""
    gray = crop.mean(-1)
    return np.digitize(gray, np.quantile(gray, [1 / 3, 2 / 3])).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``classes/<name>/`` and ``pairs/{images,segmentations}/<name>/`` of 64-pixel crops, train and held out."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for name, photo in PHOTOS.items():
            for i, crop in enumerate(crops(getattr(skimage_data, photo)(), count, rng)):
                for folder in (root / split / "classes" / name, root / split / "pairs" / "images" / name):
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(crop).save(folder / f"{i}.png")
                maps = root / split / "pairs" / "segmentations" / name
                maps.mkdir(parents=True, exist_ok=True)
                Image.fromarray(labels_of(crop), mode="L").save(maps / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vqgan(photos, tmp_path_factory):
    """The custom VQGAN preset at micro size on the crops, as a user runs it: only the folders given."""
    run = tmp_path_factory.mktemp("runs") / "vqgan"
    config = vqgan_config(ROOT / "configs/vqgan_custom.yaml", [
        f"data.path={photos / 'train' / 'classes'}", f"val_data.path={photos / 'val' / 'classes'}",
        *MICRO_VQGAN, *MICRO_TRAIN])
    return run, config


def best_is_exported(run: Path, metric: str, lower_is_better: bool) -> int:
    """RUN/model is the model of the best validated step (its checkpoint's copy); returns that step."""
    validation = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                  if f'"val/{metric}"' in line]
    assert [v["step"] for v in validation] == [2, 4, 6]
    values = [v[f"val/{metric}"] for v in validation]
    best_step = validation[values.index(min(values) if lower_is_better else max(values))]["step"]
    assert json.loads((run / "best.json").read_text())["step"] == best_step
    exported = load_file(run / "model" / "model.safetensors")
    at_best = load_file(run / "checkpoints" / f"step-{best_step:08d}" / "model" / "model.safetensors")
    assert exported.keys() == at_best.keys() and all(torch.equal(exported[k], at_best[k]) for k in at_best)
    return best_step


def valid_png(path: Path) -> None:
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.width >= 700 and picture.height >= 300


def test_custom_presets_train_end_to_end(photos, vqgan, tmp_path, capsys):
    run, config = vqgan
    train_vqgan(config, run)
    out = capsys.readouterr().out
    assert "data.size: 64 px, following the data" in out  # the preset's size is the data's, not 256
    assert "vqgan: 24 images in classes, 64×64 px -> 8×8 codes of 32, " in out and ", fp32 on cpu" in out
    assert "timing: " in out and " per 1000 steps" in out
    assert json.loads((run / "config.json").read_text())["data"]["size"] == SIDE
    step = best_is_exported(run, "psnr", lower_is_better=False)
    assert f"exported step {step}" in out
    valid_png(run / "curves.png")
    first_stage = run / "model"
    assert tamer.load(first_stage).encode(torch.zeros(1, 3, SIDE, SIDE)).shape == (1, 8, 8)

    # a segmentation VQGAN for the pairs' label maps (f8 too: 8×8 condition tokens)
    torch.manual_seed(0)
    seg = VQGAN(VQGANConfig(autoencoder=AutoencoderConfig(
        ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=SIDE,
        in_channels=LABELS, out_ch=LABELS, norm_groups=0), quantizer=QuantizerConfig(num_codes=16, embed_dim=8),
        colorize_nlabels=LABELS)).save(tmp_path / "seg-vqgan")

    kinds = {"uncond": ("images", "classes"), "classes": ("classes", "classes"), "pairs": ("pairs", "pairs")}
    for preset, (what, folder) in kinds.items():
        extra = [f"cond_stage={seg}"] if preset == "pairs" else []
        config = transformer_config(ROOT / f"configs/transformer_custom_{preset}.yaml", [
            f"first_stage={first_stage}", f"data.path={photos / 'train' / folder}",
            f"val_data.path={photos / 'val' / folder}", *extra, *MICRO_GPT, *MICRO_TRAIN])
        train_transformer(config, tmp_path / preset)
        out = capsys.readouterr().out
        assert "data.size: 64 px, following the data" in out, preset
        assert ", 64×64 px -> 8×8 codes of 32, " in out and "24 images" in out, preset
        assert "note: train.ema_decay: 0.9999 averages over about 10,000 steps" in out  # EMA off for 6 steps
        model = tamer.load(tmp_path / preset / "model")
        assert model.config.image_size == (SIDE, SIDE) and model.config.code_shape == (8, 8), preset
        step = best_is_exported(tmp_path / preset, "nll", lower_is_better=True)
        assert f"exported step {step}" in out and "it has the best held-out nll" in out
        valid_png(tmp_path / preset / "curves.png")
        if preset == "classes":
            assert "3 classes" in out
            assert model.conditioning.class_names == ("astronaut", "cat", "coffee")
            preview = sorted((tmp_path / preset / "images").glob("*-samples.png"))[-1]
            picture = np.asarray(Image.open(preview).convert("L"))
            assert picture.shape[1] >= 3 * SIDE * 2  # a sample per class, enlarged twice
            assert (picture[:18] < 100).any() and (picture[:18] > 250).mean() > 0.8  # names written above them

    # the names travel with the model folder: sampling by name, labelled rows
    assert cli(["sample", "--model", str(tmp_path / "classes" / "model"), "--class", "cat", "coffee", "-n", "2",
                "--out", str(tmp_path / "samples")]) == 0
    record = json.loads((tmp_path / "samples" / "sample.json").read_text())
    assert record["labels"] == [1, 2] and (tmp_path / "samples" / "grid-labelled.png").is_file()

    # curves of several runs side by side
    assert cli(["plot", str(tmp_path / "uncond"), str(tmp_path / "classes"), "--out", str(tmp_path / "cmp.png")]) == 0
    valid_png(tmp_path / "cmp.png")


def test_a_held_out_folder_missing_a_class_is_refused(photos, vqgan, tmp_path):
    run, _ = vqgan
    val = tmp_path / "val"
    shutil.copytree(photos / "val" / "classes", val)
    shutil.rmtree(val / "cat")
    with pytest.raises(ConfigError) as error:
        train_transformer(transformer_config(ROOT / "configs/transformer_custom_classes.yaml", [
            f"first_stage={tmp_path / 'unused'}", f"data.path={photos / 'train' / 'classes'}",
            f"val_data.path={val}", *MICRO_GPT, *MICRO_TRAIN]), tmp_path / "run")
    assert str(error.value) == (f"val_data.path {val}: its classes differ from the training data's (missing cat); "
                                "the labels would mean other classes")


def test_the_cpu_presets_fit_their_steps_to_the_data(photos, tmp_path, capsys):
    """The CPU-sized presets as shipped (their own model sizes), with train.epochs deciding the steps."""
    quick = ["train.epochs=2", "train.batch_size=8", "train.val_every=3", "train.checkpoint_every=3",
             "train.val_batches=1", "train.precision=fp32", "loss.perceptual_weight=0"]
    folders = [f"data.path={photos / 'train' / 'classes'}", f"val_data.path={photos / 'val' / 'classes'}"]
    train_vqgan(vqgan_config("vqgan_custom_cpu", [*folders, *quick]), tmp_path / "vqgan")
    out = capsys.readouterr().out
    assert "train.epochs: 2 passes over 24 items at 8 per step -> 6 steps" in out
    assert "vqgan: 24 images in classes, 64×64 px -> 8×8 codes of 512, " in out
    assert json.loads((tmp_path / "vqgan" / "config.json").read_text())["resolved_steps"] == 6
    train_transformer(transformer_config("transformer_custom_classes_cpu", [
        f"first_stage={tmp_path / 'vqgan' / 'model'}", *folders, *quick[:-1]]), tmp_path / "classes")
    out = capsys.readouterr().out
    assert "train.epochs: 2 passes over 24 items at 8 per step -> 6 steps" in out and "3 classes" in out
    model = tamer.load(tmp_path / "classes" / "model")
    assert (model.config.gpt.n_layer, model.config.gpt.n_embd) == (4, 256)
    assert model.conditioning.class_names == ("astronaut", "cat", "coffee")
