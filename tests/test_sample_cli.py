"""`tamer sample` end to end on small random models: files written, seeds reproducible, bad input named."""

import json

import numpy as np
import torch
from PIL import Image

from tamer.ar.generation import label_map_to_png
from tamer.cli import main
from test_transformer import CLASS, SEG_STAGE, make_model


def test_class_samples_grid_codes_and_record(class_model, tmp_path):
    out = tmp_path / "out"
    assert main(["sample", "--model", str(class_model), "--class", "0", "2", "-n", "2", "--top-k", "5",
                 "--seed", "3", "--batch-size", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("sample-*.png")) == [f"sample-{s}.png" for s in (3, 4, 5, 6)]
    codes = np.load(out / "codes.npy")
    assert codes.shape == (4, 8, 8) and codes.max() < 32
    record = json.loads((out / "sample.json").read_text())
    assert record["seeds"] == [3, 4, 5, 6] and record["settings"]["top_k"] == 5
    grid = Image.open(out / "grid.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # one row per class, two per row, 2 px padding

    again = tmp_path / "again"  # sample 6 (class 2) alone, seeded 6: the same image
    assert main(["sample", "--model", str(class_model), "--class", "2", "-n", "1", "--top-k", "5", "--seed", "6",
                 "--out", str(again)]) == 0
    assert np.array_equal(np.load(again / "codes.npy")[0], codes[3])
    assert (again / "sample-6.png").read_bytes() == (out / "sample-6.png").read_bytes()


def test_classes_by_name_and_a_labelled_grid(tmp_path, capsys):
    names = ["astronaut", "camera", "coffee", "rocket"]
    torch.manual_seed(0)
    make_model({**CLASS, "class_names": names}).save(tmp_path / "named")
    model = str(tmp_path / "named")
    assert main(["sample", "--model", model, "--class", "rocket", "1", "-n", "2", "--top-k", "5", "--seed", "3",
                 "--out", str(tmp_path / "by-name")]) == 0
    assert main(["sample", "--model", model, "--class", "3", "camera", "-n", "2", "--top-k", "5", "--seed", "3",
                 "--out", str(tmp_path / "by-label")]) == 0
    assert np.array_equal(np.load(tmp_path / "by-name" / "codes.npy"), np.load(tmp_path / "by-label" / "codes.npy"))
    record = json.loads((tmp_path / "by-name" / "sample.json").read_text())
    assert record["request"]["classes"] == ["rocket", "1"] and record["labels"] == [3, 1]
    labelled = Image.open(tmp_path / "by-name" / "grid-labelled.png")
    plain = Image.open(tmp_path / "by-name" / "grid.png")
    assert labelled.width > 8 * plain.width and labelled.height == 8 * plain.height  # 16 px samples enlarged 8×
    left = np.asarray(labelled.convert("L"))[:, : labelled.width - 8 * plain.width]
    assert left.min() < 128  # the row names are drawn left of the grid

    assert main(["sample", "--model", model, "--class", "rockte", "--out", str(tmp_path / "typo")]) == 1
    err = capsys.readouterr().err
    assert "--class rockte: not a class of this model (did you mean 'rocket'?); its classes: astronaut," in err
    assert main(["sample", "--model", model, "--out", str(tmp_path / "none")]) == 1
    assert "give --class (0..3 or a name: astronaut, camera, coffee, rocket)" in capsys.readouterr().err


def test_guided_sampling_from_the_command_line(class_model, tmp_path):
    assert main(["sample", "--model", str(class_model), "--class", "1", "-n", "1", "--cfg-scale", "2.5",
                 "--top-p", "0.9", "--temperature", "0.8", "--out", str(tmp_path)]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (1, 8, 8)


def test_segmentation_conditioned_samples_from_a_label_map(tmp_path):
    model = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    model.save(tmp_path / "seg")
    label_map_to_png(torch.randint(0, 5, (8, 8)), tmp_path / "map.png")
    assert main(["sample", "--model", str(tmp_path / "seg"), "--cond", str(tmp_path / "map.png"), "-n", "2",
                 "--out", str(tmp_path / "out")]) == 0
    assert np.load(tmp_path / "out" / "codes.npy").shape == (2, 4, 4)


def test_bad_requests_are_named(class_model, tmp_path, capsys):
    assert main(["sample", "--model", str(class_model), "--out", str(tmp_path)]) == 1
    assert "class-conditional: give --class" in capsys.readouterr().err
    assert main(["sample", "--model", str(class_model), "--class", "9", "--out", str(tmp_path)]) == 1
    assert "class label 9 is outside 0..3" in capsys.readouterr().err
    assert main(["sample", "--model", str(class_model), "--class", "1", "--cfg-scale", "2", "--temperature", "0",
                 "--out", str(tmp_path)]) == 1
    assert "temperature: must be positive" in capsys.readouterr().err

    model = make_model({"kind": "spatial", "key": "segmentation", "stage": SEG_STAGE}, code_shape=(4, 4))
    model.save(tmp_path / "seg")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert main(["sample", "--model", str(tmp_path / "seg"), "--cond", str(tmp_path / "rgb.png"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "single-channel label map" in capsys.readouterr().err
    label_map_to_png(torch.zeros(24, 16), tmp_path / "tall.png")
    assert main(["sample", "--model", str(tmp_path / "seg"), "--cond", str(tmp_path / "tall.png"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "give --size to match the map" in capsys.readouterr().err
