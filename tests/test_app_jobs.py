"""What the web app's buttons do (tamer.app.jobs, no browser): the same samples as `tamer sample`, live previews
that fill in, completion that keeps the given rows, drawn maps, reconstructions, names, and clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tamer.api import encode_images, read_images, reconstruct_images
from tamer.app import jobs
from tamer.app.labels import class_names, palette, segmentation_names
from tamer.ar.generation import label_map_to_png
from tamer.cli import main
from tamer.data.procedural import SHAPES
from tamer.imageio import read_image
from test_transformer import CLASS, SEG_STAGE, make_model


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_samples_equal_tamer_sample_beyond_the_training_size_and_previews_fill_in(class_model, tmp_path, one_thread):
    import tamer

    model = tamer.load(class_model)
    assert main(["sample", "--model", str(class_model), "--class", "1", "-n", "2", "--top-p", "0.9", "--seed", "3",
                 "--size", "24x16", "--precision", "fp32", "--out", str(tmp_path / "cli")]) == 0  # the app's
    previews = []
    result = jobs.sample(model, tmp_path / "app", jobs.Controls(seed=3, num_samples=2, top_p=0.9, size=(24, 16)),
                         class_label=1, show=lambda images, done, total: previews.append((images, done, total)))
    assert "24×16 pixels (12×8 codes, sliding window)" in result.summary
    for path in result.images:
        assert np.array_equal(pixels(path), pixels(tmp_path / "cli" / path.name))
    assert np.array_equal(np.load(tmp_path / "app" / "codes.npy"), np.load(tmp_path / "cli" / "codes.npy"))

    assert [done for _, done, _ in previews] == list(range(8, 97, 8))  # after every one of the 12 code rows
    first, _, total = previews[0]
    assert total == 96 and len(first) == 2 and first[0].shape == (24, 16, 3)
    assert (first[0][2:] == 128).all() and not (first[0][:2] == 128).all()  # one code row (2 px) drawn, rest grey
    assert np.array_equal(previews[-1][0][1], pixels(tmp_path / "cli" / "sample-4.png"))


def test_completion_keeps_the_top_rows_of_the_upload(class_model, tmp_path, one_thread):
    import tamer

    model = tamer.load(class_model)
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(picture)
    previews = []
    result = jobs.complete(model, tmp_path / "out", jobs.Controls(seed=0, num_samples=3), str(picture), keep_rows=3,
                           class_label=2, show=lambda images, done, total: previews.append(done))
    assert [p.name for p in result.images] == ["input.png", "sample-0.png", "sample-1.png", "sample-2.png"]
    codes = np.load(tmp_path / "out" / "codes.npy")
    given = model.encode_images(jobs._cover(read_image(picture)[0], (16, 16))[None])
    assert codes.shape == (3, 8, 8) and (codes[:, :3] == given[:, :3].numpy()).all()
    assert not (codes[:, 3:] == given[:, 3:].numpy()).all()
    assert previews[0] > 24 and previews[-1] == 64  # the preview starts with the kept rows
    assert json.loads((tmp_path / "out" / "completion.json").read_text())["keep_rows"] == 3
    with pytest.raises(ValueError, match="rows to keep: expected 0..7 of the 8 code rows, got 8"):
        jobs.complete(model, tmp_path / "x", jobs.Controls(), str(picture), keep_rows=8, class_label=0)


def test_bad_requests_are_named_before_anything_runs(class_model, tmp_path):
    import tamer

    model = tamer.load(class_model)
    with pytest.raises(ValueError, match="class label 9 is outside 0..3"):
        jobs.sample(model, tmp_path / "a", jobs.Controls(), class_label=9)
    with pytest.raises(ValueError, match="size 8×16: smaller than the training size 16×16"):
        jobs.sample(model, tmp_path / "b", jobs.Controls(size=(8, 16)), class_label=0)
    with pytest.raises(ValueError, match="not a multiple of the downsampling factor 2"):
        jobs.sample(model, tmp_path / "c", jobs.Controls(size=(17, 16)), class_label=0)
    with pytest.raises(ValueError, match="top_k: expected a positive integer"):
        jobs.sample(model, tmp_path / "d", jobs.Controls(top_k=-2), class_label=0)
    with pytest.raises(ValueError, match=r"this model is class-conditional: pick a class \(0..3\)"):
        jobs.sample(model, tmp_path / "e", jobs.Controls())
    seg = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    with pytest.raises(ValueError, match="conditioned on segmentation maps: upload one or draw one"):
        jobs.sample(seg, tmp_path / "f", jobs.Controls())
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_a_drawn_segmentation_map_samples_like_the_same_map_from_a_file(tmp_path, one_thread):
    model = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    colours = palette(5)
    drawing = np.zeros((32, 32, 4), np.uint8)  # drawn at twice the size; unpainted (transparent) is label 0
    drawing[:16, :, :3], drawing[:16, :, 3] = colours[3], 255
    drawing[16:, 16:, :3], drawing[16:, 16:, 3] = np.array(colours[1]) + 10, 255  # near colour 1
    drawn = jobs.drawing_to_label_map(drawing, 5, (16, 16), tmp_path / "drawn.png")
    labels = np.asarray(Image.open(drawn))
    expected = np.zeros((16, 16), np.uint8)
    expected[:8], expected[8:, 8:] = 3, 1
    assert np.array_equal(labels, expected)

    model.save(tmp_path / "seg")
    label_map_to_png(torch.from_numpy(expected), tmp_path / "map.png")
    assert main(["sample", "--model", str(tmp_path / "seg"), "--cond", str(tmp_path / "map.png"), "-n", "2",
                 "--size", "16x16", "--precision", "fp32", "--out", str(tmp_path / "cli")]) == 0  # the app's
    result = jobs.sample(model, tmp_path / "app", jobs.Controls(seed=0, num_samples=2, size=(64, 64)),
                         condition_map=str(drawn))
    assert "16×16 pixels" in result.summary  # a spatial model samples at its map's size
    for path in result.images:
        assert np.array_equal(pixels(path), pixels(tmp_path / "cli" / path.name))


def test_reconstruction_psnr_and_codes(tmp_path):
    vqgan = make_model(CLASS).first_stage_model
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (17, 16, 3), dtype=np.uint8)).save(picture)
    result = jobs.reconstruct(vqgan, tmp_path / "out", str(picture))
    images, _ = read_images([picture], vqgan)
    [(_, psnr)] = reconstruct_images(vqgan, images)
    assert result.summary.startswith(f"PSNR {psnr:.2f} dB; 8×8 codes of 32 (photo.png: 17×16 centre-cropped to 16×16")
    assert np.array_equal(result.codes, encode_images(vqgan, images)[0].numpy())
    assert np.array_equal(np.load(tmp_path / "out" / "codes.npy")[0], result.codes)
    assert result.archive.name == "out.zip" and result.archive.is_file()


def test_names_come_from_the_training_run(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    assert class_names(run / "model", 2) == ["class 0", "class 1"]  # no run config: numbered
    (run / "config.json").write_text(json.dumps({"data": {"kind": "procedural", "num_classes": 3}}))
    assert class_names(run / "model", 3) == list(SHAPES[:3])
    assert segmentation_names(run / "model", 3) == ["background", SHAPES[0], SHAPES[1]]
    for name in ("dogs", "cats", ".hidden"):
        (tmp_path / "classes" / name).mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"kind": "classes", "path": str(tmp_path / "classes")}}))
    assert class_names(run / "model", 3) == ["cats", "dogs", "class 2"]
    # names the model stores win over the run's folder (which may have changed since)
    assert class_names(run / "model", 3, ("owls", "cats")) == ["owls", "cats", "class 2"]
    assert len(set(palette(40))) == 40
