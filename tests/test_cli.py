"""The ``tamer`` command on real photos (from scikit-image) and on bad files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from tamer.cli import main as cli
from tamer.imageio import read_image
from tamer.metrics.image import psnr
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    config = VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                           z_channels=8, resolution=32), QuantizerConfig(num_codes=64, embed_dim=8))
    VQGAN(config).save(path)
    return path


@pytest.fixture()
def photos(tmp_path):
    paths = []
    for name in ("astronaut", "coffee"):
        image = Image.fromarray(getattr(data, name)()).resize((64, 48))
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1])
    return paths


def test_reconstruct_writes_images_and_prints_psnr(model_dir, photos, tmp_path, capsys):
    assert cli(["reconstruct", "--model", str(model_dir), *map(str, photos), "--out", str(tmp_path / "rec")]) == 0
    out = capsys.readouterr().out
    for path in photos:
        written = tmp_path / "rec" / path.name
        assert written.is_file() and Image.open(written).size == (64, 48)
        original, _ = read_image(path)
        reconstruction, _ = read_image(written)
        line = next(line for line in out.splitlines() if line.startswith(path.name))
        assert float(line.split()[-1]) == pytest.approx(psnr(reconstruction, original).item(), abs=0.1)


def test_encode_then_decode_matches_reconstruct(model_dir, photos, tmp_path, capsys):
    codes = tmp_path / "codes.npy"
    assert cli(["encode", "--model", str(model_dir), *map(str, photos), "--out", str(codes)]) == 0
    array = np.load(codes)
    assert array.shape == (2, 12, 16)
    capsys.readouterr()
    assert cli(["decode", "--model", str(model_dir), str(codes), "--out", str(tmp_path / "dec1"),
                "--batch-size", "1"]) == 0
    bar = capsys.readouterr().err
    assert "decode: 100%" in bar and "2/2" in bar  # two batches: a bar over them
    assert cli(["decode", "--model", str(model_dir), str(codes), "--out", str(tmp_path / "dec")]) == 0
    assert "decode:" not in capsys.readouterr().err  # one batch: no bar
    assert cli(["reconstruct", "--model", str(model_dir), *map(str, photos), "--out", str(tmp_path / "rec")]) == 0
    for i, path in enumerate(photos):
        decoded = np.asarray(Image.open(tmp_path / "dec" / f"{i:04d}.png"), dtype=int)
        reconstructed = np.asarray(Image.open(tmp_path / "rec" / path.name), dtype=int)
        assert np.abs(decoded - reconstructed).max() <= 1  # same codes, same pixels up to rounding


def test_bad_images_are_named(model_dir, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    buffer = tmp_path / "full.png"
    Image.fromarray(data.camera()).save(buffer)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.read_bytes()[:2000])

    for bad, message in ((text, "not an image"), (truncated, "corrupt or truncated"), (tmp_path / "nope.png",
                                                                                        "no such file")):
        assert cli(["reconstruct", "--model", str(model_dir), str(bad), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert str(bad) in err and message in err


def test_conversions_and_fitting_are_reported(model_dir, tmp_path, capsys):
    gray = tmp_path / "gray.png"
    Image.fromarray(data.camera()[:50, :45]).save(gray)  # grayscale, 50×45: not multiples of 4
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([data.astronaut()[:32, :32], np.full((32, 32), 128, np.uint8)])).save(rgba)
    assert cli(["reconstruct", "--model", str(model_dir), str(gray), str(rgba), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"{gray}: L image converted to RGB" in out
    assert f"{gray}: 50×45 centre-cropped to 48×44" in out
    assert f"{rgba}: RGBA image, alpha composited on white" in out
    assert Image.open(tmp_path / "o" / "gray.png").size == (44, 48)

    assert cli(["reconstruct", "--model", str(model_dir), str(gray), "--fit", "pad", "--out", str(tmp_path / "p")]) == 0
    assert "50×45 padded (edge replicated, right and bottom) to 52×48" in capsys.readouterr().out
    assert cli(["encode", "--model", str(model_dir), str(gray), "--fit", "resize",
                "--out", str(tmp_path / "c.npy")]) == 0
    assert "50×45 resized to 48×44" in capsys.readouterr().out


def test_decode_rejects_codes_outside_the_vocabulary(model_dir, tmp_path, capsys):
    np.save(tmp_path / "codes.npy", np.full((1, 4, 4), 64, dtype=np.int64))
    assert cli(["decode", "--model", str(model_dir), str(tmp_path / "codes.npy"), "--out", str(tmp_path / "o")]) == 1
    assert "codes must lie in [0, 64)" in capsys.readouterr().err


def test_demo_reconstructs_the_bundled_photos(model_dir, tmp_path):
    assert cli(["demo-photos", "--model", str(model_dir), "--size", "64", "--out", str(tmp_path / "demo")]) == 0
    summary = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(summary["psnr_db"]) == {"astronaut", "coffee", "chelsea", "rocket"}
    assert summary["codes_shape"] == [4, 16, 16]
    assert (tmp_path / "demo" / "chelsea-side-by-side.png").is_file()
    assert torch.from_numpy(np.load(tmp_path / "demo" / "codes.npy")).max() < 64
