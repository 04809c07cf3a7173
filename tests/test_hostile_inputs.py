"""Hostile and careless inputs at every door of the ``tamer`` command: each gets its exit status, a message that
names the input, and leaves every input file as it was. Micro models, in-process ``main()`` calls."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tamer.guards as guards
from tamer.cli import main
from tamer.compat.safe_load import UnsafeCheckpointError, load_plain
from tamer.imageio import ImageError, read_image
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.train import resume as ckpt
from tamer.vqgan.model import VQGAN, VQGANConfig
from test_transformer import CLASS, make_model

ROOT = Path(__file__).resolve().parents[1]
TAMING_YAML = ROOT / "tests/data/taming/vqgan_imagenet_f16_1024.yaml"


#: headroom above the test process's address space when the module starts: every case runs under it
MEMORY_HEADROOM = 3 << 30


def address_space() -> int:
    """This process's virtual memory size in bytes (VmSize in /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@pytest.fixture(autouse=True, scope="module")
def bounded_memory():
    """Every case in this module runs under an address-space limit of 3 GiB above what the process held when the
    module started (RLIMIT_AS, soft limit only, restored after): an input that makes tamer allocate what a file or a
    number declares, instead of refusing it first, fails its test with a MemoryError."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_the_cases_run_under_a_memory_limit(bounded_memory):
    with pytest.raises(MemoryError):
        bytearray(MEMORY_HEADROOM + (1 << 30))  # more than the headroom: refused by the OS, not allocated


# -- fixtures: micro models and a folder of inputs ------------------------------------------------------------
def micro_vqgan() -> VQGAN:
    autoencoder = AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8,
                                    resolution=16)
    return VQGAN(VQGANConfig(autoencoder, QuantizerConfig(num_codes=32, embed_dim=8)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    micro_vqgan().save(root / "vqgan")
    make_model(CLASS).save(root / "transformer")
    return root


@pytest.fixture()
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "x.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "x.jpg")
    (folder / "b").mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / "b" / "x.png")
    np.save(folder / "codes.npy", rng.integers(0, 32, (2, 8, 8)).astype(np.int16))
    return folder


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with the SHA-256 of its bytes."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def refused(argv: list[str], capsys, names: str, status: int = 1, *watch: Path) -> str:
    """Run ``tamer argv``; assert the exit status, one message naming ``names``, and ``watch`` unchanged."""
    before = snapshot(*watch)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    err = capsys.readouterr().err
    assert code == status, err
    assert str(names) in err, err
    assert "Traceback" not in err
    assert len(re.findall(r"tamer [a-z ]+: error: ", err)) == 1, err  # one message (progress bars aside)
    assert snapshot(*watch) == before
    return err


# -- numbers: refused by the argument parser, naming the option -------------------------------------------------
NUMBER_CASES = [
    (["sample", "--model", "{t}", "--class", "0", "-n", "0"], "-n/--num-samples"),
    (["sample", "--model", "{t}", "--class", "0", "-n", "-2"], "-n/--num-samples"),
    (["sample", "--model", "{t}", "--class", "0", "--batch-size", "0"], "--batch-size"),
    (["sample", "--model", "{t}", "--class", "0", "--temperature", "nan"], "--temperature"),
    (["sample", "--model", "{t}", "--class", "0", "--cfg-scale", "nan"], "--cfg-scale"),
    (["sample", "--model", "{t}", "--class", "0", "--cfg-scale", "inf"], "--cfg-scale"),
    (["sample", "--model", "{t}", "--class", "0", "--top-p", "nan"], "--top-p"),
    (["sample", "--model", "{t}", "--class", "0", "--top-k", "0"], "--top-k"),
    (["sample", "--model", "{t}", "--class", "0", "--seed", str(2**70)], "--seed"),
    (["sample", "--model", "{t}", "--class", "0", "--seed", "-1"], "--seed"),
    (["sample", "--model", "{t}", "--class", "0", "--max-pixels", "0"], "--max-pixels"),
    (["reconstruct", "--model", "{v}", "{x}", "--batch-size", "0"], "--batch-size"),
    (["reconstruct", "--model", "{v}", "{x}", "--size", "0"], "--size"),
    (["reconstruct", "--model", "{v}", "{x}", "--size", "-16"], "--size"),
    (["reconstruct", "--model", "{v}", "{x}", "--size", "ten"], "--size"),
    (["encode", "--model", "{v}", "{x}", "--batch-size", "-1"], "--batch-size"),
    (["decode", "--model", "{v}", "{codes}", "--batch-size", "0"], "--batch-size"),
    (["eval", "recon", "--model", "{v}", "--data", "procedural", "--limit", "0"], "--limit"),
    (["eval", "recon", "--model", "{v}", "--data", "procedural", "--size", "0"], "--size"),
    (["eval", "recon", "--model", "{v}", "--data", "procedural", "--workers", "-1"], "--workers"),
    (["eval", "nll", "--model", "{t}", "--data", "procedural", "--batch-size", "0"], "--batch-size"),
    (["eval", "nll", "--model", "{t}", "--data", "procedural", "--seed", "-3"], "--seed"),
    (["eval", "classes", "--model", "{t}", "-n", "0"], "-n/--samples-per-class"),
    (["eval", "classes", "--model", "{t}", "--cfg-scale", "1", "nan"], "--cfg-scale"),
    (["eval", "samples", "--samples", "{in}", "--ref", "{in}", "--batch-size", "0"], "--batch-size"),
]


def case_id(argv: list[str]) -> str:
    return f"{argv[0]}{' ' + argv[1] if argv[0] == 'eval' else ''} {argv[-2]}={argv[-1]}"


@pytest.mark.parametrize("argv, option", NUMBER_CASES, ids=[case_id(argv) for argv, _ in NUMBER_CASES])
def test_numbers_out_of_range_are_refused_by_name(argv, option, models, inputs, tmp_path, capsys):
    names = {"t": models / "transformer", "v": models / "vqgan", "x": inputs / "x.png", "codes": inputs / "codes.npy",
             "in": inputs}
    argv = [a.format(**names) for a in argv]
    err = refused([*argv, "--out", tmp_path / "out"], capsys, option, 2, inputs, models)
    assert "must be" in err or "expected a number" in err
    assert not (tmp_path / "out").exists()


def test_non_finite_sampling_settings_are_refused_in_the_library():
    from tamer.ar.sampling import SamplingSettings

    for key in ("temperature", "cfg_scale", "top_p"):
        with pytest.raises(ValueError, match=f"{key}: must be a finite number"):
            SamplingSettings(**{key: float("nan")})


@pytest.mark.parametrize("device, message", [("cuda:7", "no such GPU"), ("banana", "not a device name"),
                                              ("xla", "tamer runs on cpu, cuda or mps")])
def test_unknown_devices_are_named(device, message, models, inputs, tmp_path, capsys):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight GPUs")
    err = refused(["reconstruct", "--model", models / "vqgan", inputs / "x.png", "--device", device,
                   "--out", tmp_path / "o"], capsys, f"--device {device}", 1, inputs, models)
    assert message in err and "cpu" in err


# -- config values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [("model.quantizer.beta=.nan", "model.quantizer.beta"),
                                           ("model.quantizer.beta=nan", "model.quantizer.beta"),
                                           ("train.lr=.inf", "train.lr"),
                                           ("loss.disc_weight=-.inf", "loss.disc_weight")])
def test_non_finite_config_values_are_refused_naming_the_key(override, key, tmp_path, capsys):
    err = refused(["train", "vqgan", "--config", "vqgan_tiny_cpu", override, "--out", tmp_path / "run"], capsys, key)
    assert "finite" in err
    assert not (tmp_path / "run").exists()


# -- images -------------------------------------------------------------------------------------------------------
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width×height`` RGB pixels, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")
    deep, notes = read_image(tmp_path / "deep.png")
    flat, _ = read_image(tmp_path / "flat.png")
    assert deep.shape == (3, 64, 64) and "16-bit" in notes[0]
    assert (deep - flat).abs().max() < 2 / 255 * 2  # the 8-bit version of the same picture, within rounding
    assert deep.max() > 0.99 and deep.min() == -1


def test_float_tiff_in_unit_range_is_read_as_it_is(tmp_path):
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    image, _ = read_image(tmp_path / "f.tif")
    assert torch.allclose(image[0], torch.from_numpy(values) * 2 - 1, atol=1e-6)
    Image.fromarray(values * 300, mode="F").save(tmp_path / "hot.tif")
    with pytest.raises(ImageError, match=r"hot.tif: float image with values in \[0, 300\]"):
        read_image(tmp_path / "hot.tif")


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((16, 32, 3), np.uint8)
    array[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(array).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    image, _ = read_image(tmp_path / "turned.jpg")
    assert image.shape == (3, 32, 16)  # upright: tall
    assert image[:, :16].mean() > 0.9 and image[:, 16:].mean() < -0.9  # the white half is now on top


def test_palette_with_transparency_and_other_modes(tmp_path):
    palette = Image.new("P", (8, 8))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    palette.info["transparency"] = 1
    palette.save(tmp_path / "p.png", transparency=1)
    image, notes = read_image(tmp_path / "p.png")
    assert torch.allclose(image[:, 0, 0], torch.ones(3))  # transparent: white
    assert torch.allclose(image[:, 0, 7], torch.tensor([1.0, -1.0, -1.0]))  # opaque red
    assert "alpha composited on white" in notes[0]
    for mode in ("1", "CMYK", "LA", "I"):
        Image.new(mode, (8, 8)).save(tmp_path / f"m{mode}.{'tif' if mode in ('CMYK', 'I') else 'png'}")
    for path in tmp_path.glob("m*"):
        assert read_image(path)[0].shape == (3, 8, 8)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "not an image"),
    (lambda p: p.write_text("hello"), "not an image"),
    (lambda p: png_header_only(p, 20000, 20000), "pixel limit"),
    (lambda p: png_header_only(p, 9000, 9000), "9000×9000 image (81.0M pixels) is over the pixel limit"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_bad_image_files_are_named(make, message, models, inputs, tmp_path, capsys):
    bad = inputs / "bad.png"
    make(bad)
    for command in ("reconstruct", "encode"):
        out = tmp_path / ("o" if command == "reconstruct" else "o.npy")
        err = refused([command, "--model", models / "vqgan", inputs / "x.png", bad, "--out", out], capsys, bad, 1,
                      inputs)
        assert message in err
        assert not out.exists()


def test_the_pixel_limit_and_its_override(models, inputs, tmp_path, capsys):
    err = refused(["reconstruct", "--model", models / "vqgan", inputs / "x.png", "--size", "100000",
                   "--out", tmp_path / "o"], capsys, "--size 100000", 1, inputs)
    assert "--max-pixels" in err
    previous = guards.MAX_IMAGE_PIXELS, guards.MAX_MODEL_PIXELS
    try:
        err = refused(["reconstruct", "--model", models / "vqgan", inputs / "x.png", "--size", "64", "--max-pixels",
                       "1000", "--out", tmp_path / "o"], capsys, "x.png", 1, inputs)
        assert "limit of 0.0M" in err
        assert main(["reconstruct", "--model", str(models / "vqgan"), str(inputs / "x.png"), "--size", "64",
                     "--max-pixels", "5000", "--out", str(tmp_path / "o")]) == 0
    finally:
        guards.MAX_IMAGE_PIXELS, guards.MAX_MODEL_PIXELS = previous


# -- outputs never replace inputs ---------------------------------------------------------------------------------
def test_same_base_names_get_distinct_outputs(models, inputs, tmp_path, capsys):
    sources = [inputs / "x.png", inputs / "b" / "x.png", inputs / "x.jpg"]
    before = snapshot(inputs)
    assert main(["reconstruct", "--model", str(models / "vqgan"), *map(str, sources),
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["x-2.png", "x-3.png", "x.png"]
    assert f"{inputs / 'b' / 'x.png'}: another input has the same name, written as x-2.png" in out
    written = [read_image(tmp_path / "o" / name)[0] for name in ("x.png", "x-2.png", "x-3.png")]
    assert not torch.equal(written[0], written[1])  # three reconstructions, not one written three times
    assert snapshot(inputs) == before


@pytest.mark.parametrize("command", ["reconstruct", "decode"])
def test_out_holding_the_inputs_is_refused(command, models, inputs, capsys):
    source = [inputs / "x.png", inputs / "x.jpg"] if command == "reconstruct" else [inputs / "codes.npy"]
    refused([command, "--model", models / "vqgan", *source, "--out", inputs], capsys, f"--out {inputs}", 1, inputs)


@pytest.mark.parametrize("argv", [
    ["reconstruct", "--model", "{v}", "{x}"],
    ["decode", "--model", "{v}", "{codes}"],
    ["sample", "--model", "{t}", "--class", "0"],
])
def test_out_naming_an_existing_file_is_refused(argv, models, inputs, tmp_path, capsys):
    names = {"t": models / "transformer", "v": models / "vqgan", "x": inputs / "x.png", "codes": inputs / "codes.npy"}
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    err = refused([*(a.format(**names) for a in argv), "--out", existing], capsys, existing, 1, inputs, existing)
    assert "is an existing file" in err


@pytest.mark.parametrize("out, message", [("{x}", "is also an input"), ("{in}", "is a folder"),
                                          ("{tmp}/codes.txt", "expected a .npy")])
def test_encode_out_is_checked(out, message, models, inputs, tmp_path, capsys):
    out = out.format(x=inputs / "x.png", tmp=tmp_path, **{"in": inputs})
    err = refused(["encode", "--model", models / "vqgan", inputs / "x.png", "--out", out], capsys, "--out", 1, inputs)
    assert message in err


def test_convert_onto_an_existing_model_needs_overwrite(models, tmp_path, capsys):
    target = tmp_path / "model"
    micro_vqgan().save(target)
    err = refused(["convert", tmp_path / "any.ckpt", "--config", TAMING_YAML, "--out", target], capsys,
                  f"--out {target}", 1, target)
    assert "--overwrite" in err


@pytest.mark.parametrize("evaluation, out, message", [
    (["recon", "--model", "{v}", "--data", "procedural"], "{in}", "is a folder"),
    (["nll", "--model", "{t}", "--data", "procedural"], "{in}", "is a folder"),
    (["recon", "--model", "{v}", "--data", "procedural"], "{x}", "expected a .json"),
    (["reference", "--images", "{in}"], "{tmp}/stats.json", "expected a .npz"),
    (["samples", "--samples", "{in}", "--ref", "{in}"], "{tmp}/nofolder.txt/r.json", "is a file"),
    (["classes", "--model", "{t}"], "{in}", "is a folder"),
])
def test_eval_out_is_checked_before_computing(evaluation, out, message, models, inputs, tmp_path, capsys):
    (tmp_path / "nofolder.txt").write_text("a file")
    names = {"t": models / "transformer", "v": models / "vqgan", "x": inputs / "x.png", "in": inputs, "tmp": tmp_path}
    err = refused(["eval", *(a.format(**names) for a in evaluation), "--out", out.format(**names)], capsys, "--out",
                  1, inputs, models)
    assert message in err


# -- models and checkpoints -----------------------------------------------------------------------------------------
def damaged_model(folder: Path, how: str) -> Path:
    micro_vqgan().save(folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    document = json.loads(config.read_text())
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "empty":
        weights.write_bytes(b"")
    elif how == "no weights":
        weights.unlink()
    elif how == "config list":
        config.write_text("[1, 2, 3]")
    elif how == "config junk":
        config.write_text("{model_type: vqgan")
    elif how == "unknown type":
        config.write_text(json.dumps({**document, "model_type": "diffusion"}))
    elif how == "nan beta":
        document["config"]["quantizer"]["beta"] = float("nan")
        config.write_text(json.dumps(document))
    elif how == "huge codebook":  # 100M codes would be a 3 GB model: refused from the file's header
        document["config"]["quantizer"]["num_codes"] = 100_000_000
        config.write_text(json.dumps(document))
    return folder


DAMAGE = {"truncated": "model.safetensors", "empty": "model.safetensors", "no weights": "no model.safetensors",
          "config list": "config.json", "config junk": "config.json", "unknown type": "model_type 'diffusion'",
          "nan beta": "config.quantizer.beta", "huge codebook": "quantize.embedding.weight"}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("command", ["reconstruct", "decode", "eval"])
def test_damaged_models_are_named(how, command, inputs, tmp_path, capsys):
    model = damaged_model(tmp_path / "model", how)
    argv = {"reconstruct": ["reconstruct", "--model", model, inputs / "x.png"],
            "decode": ["decode", "--model", model, inputs / "codes.npy"],
            "eval": ["eval", "recon", "--model", model, "--data", "procedural", "--limit", "2"]}[command]
    err = refused([*argv, "--out", tmp_path / "o.json" if command == "eval" else tmp_path / "o"], capsys, model, 1,
                  inputs, model)
    assert DAMAGE[how] in err


@pytest.mark.parametrize("command", ["reconstruct", "encode", "decode"])
def test_a_transformer_is_not_a_vqgan(command, models, inputs, tmp_path, capsys):
    source = inputs / ("codes.npy" if command == "decode" else "x.png")
    err = refused([command, "--model", models / "transformer", source, "--out", tmp_path / "o.npy"], capsys,
                  models / "transformer", 1, inputs, models)
    assert "holds a Transformer" in err and "first_stage_model" in err


def test_a_vqgan_cannot_sample(models, tmp_path, capsys):
    refused(["sample", "--model", models / "vqgan", "--out", tmp_path / "o"], capsys, models / "vqgan", 1, models)


def torch_save_with_bomb(path: Path, record_bytes: int) -> Path:
    """A genuine ``torch.save`` zip plus one deflated record of ``record_bytes`` zeros (a tiny file)."""
    plain = path.with_suffix(".plain")
    torch.save({"state_dict": {"w": torch.zeros(4)}}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as bomb:
        for record in source.infolist():
            bomb.writestr(record, source.read(record))
        prefix = source.infolist()[0].filename.split("/")[0]
        bomb.writestr(f"{prefix}/data/99", b"\0" * record_bytes, compress_type=zipfile.ZIP_DEFLATED)
    plain.unlink()
    return path


def test_a_decompression_bomb_checkpoint_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    bomb = torch_save_with_bomb(tmp_path / "last.ckpt", 64 << 20)
    assert bomb.stat().st_size < 200_000  # 64 MiB of zeros inside
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    err = refused(["convert", bomb, "--config", TAMING_YAML, "--out", tmp_path / "converted"], capsys, bomb, 1, bomb)
    assert "decompression bomb" in err and "64 MiB" in err


def test_a_legacy_checkpoint_declaring_more_than_it_holds_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from tamer.compat.safe_load import safe_torch_load

    genuine = tmp_path / "genuine.ckpt"  # the pre-1.6 format: pickles, then each storage's raw bytes
    weights = {"state_dict": {"w": torch.arange(6.0), "n": torch.tensor([3], dtype=torch.int64)}}
    torch.save(weights, genuine, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_torch_load(genuine)["state_dict"]["w"], weights["state_dict"]["w"])
    big = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(16 << 20)}}, big, _use_new_zipfile_serialization=False)
    bomb = tmp_path / "last.ckpt"  # 64 MiB declared, the first 2 KB kept: torch would allocate it all first
    bomb.write_bytes(big.read_bytes()[:2048])
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    err = refused(["convert", bomb, "--config", TAMING_YAML, "--out", tmp_path / "converted"], capsys, bomb, 1, bomb)
    assert "declare 64.0 MiB in a file of 0.0 MiB" in err


def legacy_bomb(path: Path, declared_floats: int) -> Path:
    """A legacy (pre-1.6) torch.save file of a few hundred bytes whose one tensor declares ``declared_floats``."""
    import collections
    import pickle

    class Storage:  # pickled as a persistent id, the way torch's legacy saver writes a storage
        pass

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (STORAGE, 0, (declared_floats,), (1,), False,
                                                     collections.OrderedDict())

    STORAGE = Storage()

    class Saver(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", declared_floats, None) if obj is STORAGE else None

    with open(path, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, file, protocol=2)
        Saver(file, protocol=2).dump({"state_dict": {"w": Tensor()}})
        pickle.dump(["0"], file, protocol=2)
    return path


def test_a_checkpoint_bomb_is_refused_under_a_memory_limit(tmp_path):
    """Run as a user would, under an address-space limit of 5 GiB: a 300-byte file declaring 8 GiB of weights is
    refused by name instead of taking the memory (torch.load would allocate it before reading)."""
    import resource
    import subprocess
    import sys

    bomb = legacy_bomb(tmp_path / "last.ckpt", 2 << 30)
    assert bomb.stat().st_size < 1000
    limit = 5 << 30

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run([sys.executable, "-m", "tamer.cli", "convert", str(bomb), "--config", str(TAMING_YAML),
                             "--out", str(tmp_path / "converted")], capture_output=True, text=True,
                            preexec_fn=limited, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"{bomb}: refused, its tensors declare 8192.0 MiB" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "converted").exists()


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (os.urandom(4096), "not a readable"),
                                              (b"PK\x03\x04" + b"\0" * 100, "not a readable")])
def test_junk_checkpoints_are_named(content, message, tmp_path, capsys):
    junk = tmp_path / "last.ckpt"
    junk.write_bytes(content)
    err = refused(["convert", junk, "--config", TAMING_YAML, "--out", tmp_path / "converted"], capsys, junk, 1, junk)
    assert message in err


def test_a_junk_inception_file_is_named(inputs, tmp_path, capsys):
    junk = tmp_path / "inception.pth"
    torch.save({"not": torch.zeros(1)}, junk)
    err = refused(["eval", "samples", "--samples", inputs, "--ref", inputs, "--inception", junk], capsys, junk, 1,
                  junk, inputs)
    assert "not torch-fidelity's InceptionV3" in err
    junk.write_bytes(os.urandom(1000))
    refused(["eval", "samples", "--samples", inputs, "--ref", inputs, "--inception", junk], capsys, junk, 1, junk)


def test_reference_statistics_with_nan_are_refused(tmp_path):
    from tamer.metrics.reference import ReferenceStatistics

    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.full(8, np.nan), sigma=np.eye(8))
    with pytest.raises(ValueError, match=r"ref.npz: 'mu' holds NaN or infinite values"):
        ReferenceStatistics.load(stats)


# -- code files for decode --------------------------------------------------------------------------------------------
CODE_FILES = {
    "npz": (lambda p: np.savez(p, codes=np.zeros((1, 4, 4), np.int64)), ".npz archive"),
    "empty": (lambda p: p.write_bytes(b""), "not a .npy array"),
    "no codes": (lambda p: np.save(p, np.zeros((1, 0, 8), np.int64)), "holds no codes"),
    "floats": (lambda p: np.save(p, np.zeros((1, 4, 4), np.float32)), "expected integer codes"),
    "four dims": (lambda p: np.save(p, np.zeros((1, 1, 4, 4), np.int64)), "expected integer codes"),
    "beyond vocabulary": (lambda p: np.save(p, np.full((1, 4, 4), 32, np.int64)), "codes must lie in [0, 32)"),
    "negative": (lambda p: np.save(p, np.full((1, 4, 4), -1, np.int64)), "codes must lie in [0, 32)"),
    "pickled": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a .npy array"),
    "huge grid": (lambda p: np.save(p, np.zeros((1, 2048, 2048), np.int16)), "over the limit"),
}


@pytest.mark.parametrize("kind", CODE_FILES)
def test_bad_code_files_are_named(kind, models, tmp_path, capsys):
    make, message = CODE_FILES[kind]
    path = tmp_path / ("codes.npz" if kind == "npz" else "codes.npy")
    make(path)
    err = refused(["decode", "--model", models / "vqgan", path, "--out", tmp_path / "o"], capsys, path, 1, path)
    assert message in err


# -- training runs ------------------------------------------------------------------------------------------------
MICRO = ["model.autoencoder.ch=32", "model.autoencoder.ch_mult=[1,2]", "model.autoencoder.num_res_blocks=1",
         "model.autoencoder.attn_resolutions=[]", "model.autoencoder.z_channels=8", "model.autoencoder.resolution=16",
         "model.quantizer.num_codes=32", "model.quantizer.embed_dim=8", "data.size=16", "data.length=64",
         "val_data.size=16", "val_data.length=4", "train.val_batches=1", "train.log_every=1",
         "loss.disc_ndf=16", "loss.disc_num_layers=1", "train.batch_size=2", "train.val_every=1000",
         "train.image_every=1000", "train.checkpoint_every=1", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A two-step micro run with checkpoints at steps 1 and 2."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=2", "--out", str(run)]) == 0
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000001", "step-00000002"]
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, to))


def test_a_new_run_into_an_old_one_is_refused(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    err = refused(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=2", "--out", run], capsys,
                  f"--out {run}", 1, run)
    assert "--resume" in err and "--overwrite" in err
    refused(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "--resume", "--overwrite", "--out", run],
            capsys, "choose one", 1, run)


def test_overwrite_replaces_the_old_run(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    assert main(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=1", "--overwrite",
                 "--out", str(run)]) == 0
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000001"]
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 1  # no line of the old two-step run is left


DAMAGES = ["truncate weights", "empty state", "poison state", "delete rng", "state is a list"]


def damage_checkpoint(folder: Path, damage: str) -> None:
    if damage == "truncate weights":
        weights = folder / "vqgan.safetensors"
        weights.write_bytes(weights.read_bytes()[:2000])
    elif damage == "empty state":
        (folder / "training_state.pt").write_bytes(b"")
    elif damage == "poison state":
        torch.save({"step": 2, "payload": Poison()}, folder / "training_state.pt")
    elif damage == "delete rng":
        (folder / "rng-rank0.pt").unlink()
    else:
        torch.save([1, 2], folder / "training_state.pt")


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_newest_intact_checkpoint_is_found(damage, finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "run")
    damage_checkpoint(run / "checkpoints" / "step-00000002", damage)
    notes = []
    folder, files = ckpt.newest_intact_checkpoint(run, ["vqgan", "discriminator"], False, 0, report=notes.append)
    assert folder.name == "step-00000001" and files["state"]["step"] == 1
    assert len(notes) == 1 and "skipping step-00000002, it is damaged" in notes[0]
    assert "step-00000002/" in notes[0]  # the damaged file is named
    assert not (Path.cwd() / "pwned").exists()


def test_resume_falls_back_past_a_truncated_checkpoint(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    damage_checkpoint(run / "checkpoints" / "step-00000002", "truncate weights")
    assert main(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=2", "--resume",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"--resume: skipping step-00000002, it is damaged: {run / 'checkpoints' / 'step-00000002'}" in out
    assert f"resumed from {run / 'checkpoints' / 'step-00000001'} at step 1" in out
    assert [p.name for p in ckpt.completed_checkpoints(run)] == ["step-00000001", "step-00000002"]


def test_resume_with_every_checkpoint_damaged_is_an_error(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    for folder in ckpt.completed_checkpoints(run):
        damage_checkpoint(folder, "empty state")
    refused(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=2", "--resume", "--out", run],
            capsys, "every checkpoint in", 1)


class Poison:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def test_a_poisoned_training_state_is_refused_by_name(tmp_path):
    torch.save({"step": 1, "payload": Poison()}, tmp_path / "training_state.pt")
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_plain(tmp_path / "training_state.pt")
    assert "training_state.pt" in str(caught.value) and "system" in str(caught.value)
    assert "weights_only=False" not in str(caught.value)
    assert not (Path.cwd() / "pwned").exists()


def test_a_full_disk_during_a_checkpoint_leaves_no_temporary_folder(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = ckpt.save_state

    def full(state, path):
        real(state, path)
        if path.name == "training_state.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(ckpt, "save_state", full)
    err = refused(["train", "vqgan", "--config", "vqgan_tiny_cpu", *MICRO, "train.steps=1", "--out", run], capsys,
                  "training_state.pt")
    assert "No space left on device" in err and "removed the partial folder" in err and "MiB are free" in err
    assert list((run / "checkpoints").iterdir()) == []


def test_data_folders_skip_oversized_and_corrupt_images(models, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    png_header_only(folder / "bomb.png", 20000, 20000)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    before = snapshot(folder)
    out = tmp_path / "recon.json"
    assert main(["eval", "recon", "--model", str(models / "vqgan"), "--data", str(folder), "--no-lpips", "--no-fid",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["num_images"] == 3
    assert any("2 of 5 files unreadable or too large, left out; 3 evaluated" in note for note in result["notes"])
    assert snapshot(folder) == before
