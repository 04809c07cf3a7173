"""tamer.data: procedural scenes, transforms that keep maps aligned, folder datasets that survive bad files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tamer.config import ConfigError
from tamer.data import (
    NUM_SEGMENTATION_LABELS,
    SHAPES,
    ClassFolder,
    DataConfig,
    ImageFileList,
    ImageFolder,
    ImageTransform,
    ProceduralShapes,
    SegmentationPairs,
    build_dataset,
    class_folder_name,
    read_label_map,
    write_procedural_dataset,
)
from tamer.imageio import ImageError


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Twelve 32×32 procedural items on disk, written once for the folder tests (which must not modify it)."""
    return write_procedural_dataset(tmp_path_factory.mktemp("shapes"), 12, size=32, seed=3, progress=False)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# --- procedural ---------------------------------------------------------------------------------------------

def test_procedural_is_deterministic_by_seed_and_index():
    a, b = ProceduralShapes(size=32, seed=7), ProceduralShapes(size=32, seed=7)
    later = b[5]  # access order must not matter
    for key, value in a[5].items():
        assert torch.equal(value, later[key]), key
    assert torch.equal(a[5]["image"], a[5 - len(a)]["image"])  # negative indices wrap
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], ProceduralShapes(size=32, seed=8)[5]["image"])


def test_procedural_outputs_have_documented_shapes_types_and_ranges():
    item = ProceduralShapes(size=48, seed=0)[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["label"].dtype == torch.long and item["label"].ndim == 0
    assert item["segmentation"].shape == (48, 48) and item["segmentation"].dtype == torch.long
    assert 0 <= item["segmentation"].min() and item["segmentation"].max() < NUM_SEGMENTATION_LABELS
    assert item["depth"].shape == (1, 48, 48) and -1 <= item["depth"].min() and item["depth"].max() <= 1
    assert item["edges"].shape == (1, 48, 48)
    assert set(item["edges"].unique().tolist()) == {-1.0, 1.0}


def test_procedural_label_is_the_dominant_visible_shape_kind():
    dataset = ProceduralShapes(size=32, length=150, num_classes=6, seed=1)
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        label = int(item["label"])
        counts = torch.bincount(item["segmentation"].flatten(), minlength=NUM_SEGMENTATION_LABELS)
        assert 0 <= label < 6
        assert int(counts[1:].argmax()) == label, f"item {i}: label {label} but {counts.tolist()}"
        labels.append(label)
    assert set(labels) == set(range(6))
    assert len(dataset.classes) == 6 and dataset.classes == list(SHAPES[:6])


def test_procedural_depth_and_edges_follow_the_scene():
    dataset = ProceduralShapes(size=64, length=20, seed=2)
    for i in range(len(dataset)):
        item = dataset[i]
        seg, depth, edges = item["segmentation"], item["depth"][0], item["edges"][0] > 0
        # every change of segmentation label is an edge (edges also mark boundaries between same-kind objects)
        changes = torch.zeros_like(edges)
        changes[:, :-1] |= seg[:, :-1] != seg[:, 1:]
        changes[:-1, :] |= seg[:-1, :] != seg[1:, :]
        assert edges[changes].all()
        assert edges.float().mean() < 0.3  # boundaries, not regions
        # shapes stand in front of the background, which recedes towards the top
        background = seg == 0
        assert depth[~background].min() > depth[background].max()
        top, bottom = background[0], background[-1]
        if top.any() and bottom.any():
            assert depth[0][top].mean() < depth[-1][bottom].mean()
    # the image shows the segmentation: colours change across label boundaries far more often than inside regions
    item = dataset[0]
    image, seg = item["image"], item["segmentation"]
    step = (image[:, :, 1:] - image[:, :, :-1]).abs().sum(0)
    boundary = seg[:, 1:] != seg[:, :-1]
    assert step[boundary].mean() > 2 * step[~boundary].mean()


def test_procedural_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        ProceduralShapes(num_classes=11)
    with pytest.raises(IndexError):
        ProceduralShapes(length=3)[3]


# --- transforms ---------------------------------------------------------------------------------------------

def _label_picture(seg: torch.Tensor) -> torch.Tensor:
    """An image whose first channel spells out the segmentation, so alignment is checkable pixel by pixel."""
    return (seg.float() / (NUM_SEGMENTATION_LABELS - 1) * 2 - 1)[None].expand(3, -1, -1).clone()


def test_random_crop_and_flip_keep_image_and_maps_aligned():
    base = ProceduralShapes(size=40, seed=4)[0]
    sample = dict(base, image=_label_picture(base["segmentation"]))
    transform = ImageTransform(size=None, crop=24, random_crop=True, flip=True)
    flipped = unflipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(sample)
        assert out["image"].shape == (3, 24, 24) and out["segmentation"].shape == (24, 24)
        assert out["depth"].shape == (1, 24, 24) and out["edges"].shape == (1, 24, 24)
        assert torch.equal(out["image"], _label_picture(out["segmentation"]))
        assert torch.equal(out["label"], base["label"])
        # locate the crop in the original (unflipped or flipped) and check depth and edges came from the same place
        for name, flip in (("plain", False), ("flipped", True)):
            seg = base["segmentation"].flip(-1) if flip else base["segmentation"]
            depth = base["depth"].flip(-1) if flip else base["depth"]
            hits = [(t, left) for t in range(17) for left in range(17)
                    if torch.equal(seg[t:t + 24, left:left + 24], out["segmentation"])
                    and torch.equal(depth[:, t:t + 24, left:left + 24], out["depth"])]
            if hits:
                flipped += flip
                unflipped += not flip
                break
        else:
            pytest.fail(f"seed {seed}: transformed maps are not one crop of the original")
    assert flipped and unflipped


def test_resize_then_centre_crop_keeps_labels_on_their_pixels():
    seg = torch.zeros(64, 96, dtype=torch.long)
    seg[8:40, 16:56] = 3
    seg[32:60, 60:90] = 7
    out = ImageTransform(size=32, crop=24)({"image": _label_picture(seg), "segmentation": seg})
    assert out["image"].shape == (3, 24, 24) and out["segmentation"].shape == (24, 24)
    assert set(out["segmentation"].unique().tolist()) <= {0, 3, 7}
    expected = _label_picture(out["segmentation"])[0]
    close = (out["image"][0] - expected).abs() < 0.05  # bicubic blurs only the boundaries
    assert close.float().mean() > 0.85


def test_transform_rejects_crop_larger_than_size():
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(size=16, crop=32)
    with pytest.raises(ValueError, match="smaller than crop"):
        ImageTransform(crop=32)({"image": torch.zeros(3, 16, 40)})


# --- files and folders --------------------------------------------------------------------------------------

def test_written_dataset_reads_back_exactly(written):
    reference = ProceduralShapes(size=32, seed=3)
    pairs = SegmentationPairs(written / "images", written / "segmentations")
    assert len(pairs) == 12
    for i in range(len(pairs)):
        index = int(pairs.records[i].image.stem)
        item, expected = pairs[i], reference[index]
        assert torch.equal(item["image"], expected["image"])
        assert torch.equal(item["segmentation"], expected["segmentation"])


def test_class_folders_give_labels_by_sorted_class_name(written):
    reference = ProceduralShapes(size=32, seed=3)
    dataset = ClassFolder(written / "images")
    assert dataset.classes == sorted(dataset.classes)
    assert all(name == class_folder_name(dataset.class_to_idx[name]) for name in dataset.classes)
    for i in range(len(dataset)):
        record = dataset.records[i]
        assert dataset.classes[record.label] == record.image.parent.name
        assert int(dataset[i]["label"]) == int(reference[int(record.image.stem)]["label"])
    assert dataset.classes == [class_folder_name(k) for k in range(len(SHAPES))]


def test_class_folders_label_by_name_order(tmp_path):
    for name, count in (("zebra", 2), ("apple", 1), ("mango", 3)):
        for i in range(count):
            _png(tmp_path / name / f"{i}.png", np.full((8, 8, 3), 40 * count, np.uint8))
    dataset = ClassFolder(tmp_path, ImageTransform(size=8))
    assert dataset.classes == ["apple", "mango", "zebra"]
    labels = sorted(int(dataset[i]["label"]) for i in range(len(dataset)))
    assert labels == [0, 1, 1, 1, 2, 2]


def test_pairs_apply_the_same_crop_and_flip_as_in_memory(written):
    transform = ImageTransform(size=32, crop=20, random_crop=True, flip=True)
    pairs = SegmentationPairs(written / "images", written / "segmentations", transform)
    reference = ProceduralShapes(size=32, seed=3)
    for i in range(4):
        index = int(pairs.records[i].image.stem)
        torch.manual_seed(100 + i)
        item = pairs[i]
        torch.manual_seed(100 + i)
        raw = reference[index]
        expected = transform({"image": raw["image"], "segmentation": raw["segmentation"]})
        assert torch.allclose(item["image"], expected["image"], atol=1e-6)
        assert torch.equal(item["segmentation"], expected["segmentation"])


def test_pairs_missing_partner_is_a_clear_error(tmp_path):
    _png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "images" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "segmentations" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError) as error:
        SegmentationPairs(tmp_path / "images", tmp_path / "segmentations")
    assert "b.jpg" in str(error.value) and str(tmp_path / "segmentations" / "b.png") in str(error.value)


def test_pairs_resize_smaller_label_maps_and_skip_mismatched_ones(tmp_path):
    _png(tmp_path / "images" / "half.png", np.zeros((16, 24, 3), np.uint8))
    _png(tmp_path / "segmentations" / "half.png", np.arange(12, dtype=np.uint8).reshape(1, 12).repeat(8, 0))
    _png(tmp_path / "images" / "wrong.png", np.zeros((16, 24, 3), np.uint8))
    _png(tmp_path / "segmentations" / "wrong.png", np.zeros((16, 16), np.uint8))
    dataset = SegmentationPairs(tmp_path / "images", tmp_path / "segmentations")
    half = dataset[0]["segmentation"]
    assert half.shape == (16, 24) and torch.equal(half[0], torch.arange(12).repeat_interleave(2))
    assert torch.equal(dataset[1]["segmentation"], half)  # the mismatched pair is skipped
    assert list(dataset.skipped) == [tmp_path / "images" / "wrong.png"]
    assert "aspect" in dataset.skipped[tmp_path / "images" / "wrong.png"]


def test_read_label_map_modes(tmp_path):
    labels = np.array([[0, 1], [2, 250]], np.uint8)
    palette = Image.fromarray(labels, mode="L").convert("P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    palette.save(tmp_path / "p.png")
    assert read_label_map(tmp_path / "p.png").tolist() == labels.tolist()
    _png(tmp_path / "gray-rgb.png", labels[..., None].repeat(3, 2))
    assert read_label_map(tmp_path / "gray-rgb.png").tolist() == labels.tolist()
    _png(tmp_path / "colour.png", np.stack([labels, labels * 0, labels], 2))
    with pytest.raises(ImageError, match="colour-coded"):
        read_label_map(tmp_path / "colour.png")


def _folder_with_bad_files(root: Path) -> tuple[list[Path], list[Path]]:
    rng = np.random.default_rng(0)
    good = [_png(root / "a.png", rng.integers(0, 255, (20, 30, 3), np.uint8)),
            _png(root / "sub" / "gray.png", rng.integers(0, 255, (20, 20), np.uint8)),
            _png(root / "sub" / "rgba.png", rng.integers(0, 255, (24, 20, 4), np.uint8)),
            _png(root / "z.png", rng.integers(0, 255, (20, 20, 3), np.uint8))]
    whole = (root / "a.png").read_bytes()
    truncated = root / "b-truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])
    text = root / "sub" / "c-text.png"
    text.write_text("this is not an image")
    return good, [truncated, text]


def test_corrupt_files_are_skipped_counted_and_named_once(tmp_path, caplog):
    good, bad = _folder_with_bad_files(tmp_path)
    dataset = ImageFolder(tmp_path, ImageTransform(size=16))
    assert len(dataset) == 6
    with caplog.at_level(logging.WARNING, logger="tamer.data"):
        items = [dataset[i] for i in range(len(dataset))] + [dataset[i] for i in range(len(dataset))]
    assert all(item["image"].shape == (3, 16, 16) for item in items)  # gray and RGBA converted
    assert set(dataset.skipped) == set(bad)
    for path in bad:
        assert sum(str(path) in record.getMessage() for record in caplog.records) == 1
    # a bad index returns the next good item, deterministically
    order = [record.image for record in dataset.records]
    truncated_index = order.index(bad[0])
    assert torch.equal(dataset[truncated_index]["image"], dataset[truncated_index + 1]["image"])
    assert torch.equal(dataset[truncated_index]["image"], dataset[truncated_index]["image"])
    # batches still form
    batch = next(iter(DataLoader(dataset, batch_size=6)))
    assert batch["image"].shape == (6, 3, 16, 16)


def test_scan_reports_and_drops_bad_files(tmp_path):
    good, bad = _folder_with_bad_files(tmp_path)
    dataset = ImageFolder(tmp_path, ImageTransform(size=16))
    found = dataset.scan(progress=False)
    assert set(found) == set(bad) and set(dataset.skipped) == set(bad)
    assert "truncated" in found[bad[0]] and "not an image" in found[bad[1]]
    assert sorted(record.image for record in dataset.records) == sorted(good)
    assert len(build_dataset({"kind": "folder", "path": str(tmp_path), "size": 16, "scan": True})) == 4


def test_all_files_bad_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_text("nope")
    (tmp_path / "y.jpg").write_bytes(b"\x89PNG\r\n")
    dataset = ImageFolder(tmp_path)
    with pytest.raises(RuntimeError, match="none of its 2 files is readable"):
        dataset[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        ImageFolder(tmp_path / "empty")


def test_file_list_resolves_relative_paths_against_root(tmp_path, written):
    outside = _png(tmp_path / "elsewhere" / "abs.png", np.full((32, 32, 3), 200, np.uint8))
    lines = (written / "images.txt").read_text().splitlines()
    list_file = tmp_path / "train.txt"
    list_file.write_text("\n".join(lines[:3] + ["", str(outside), "images/missing.png"]) + "\n")
    dataset = ImageFileList(list_file, root=written, transform=ImageTransform(size=32))
    assert [r.image for r in dataset.records[:3]] == [written / line for line in lines[:3]]
    assert len(dataset) == 5
    reference = ProceduralShapes(size=32, seed=3)
    assert torch.equal(dataset[0]["image"], reference[int(Path(lines[0]).stem)]["image"])
    assert torch.equal(dataset[3]["image"], torch.full((3, 32, 32), 200 / 127.5 - 1))
    assert torch.equal(dataset[4]["image"], dataset[0]["image"])  # the missing file is skipped, wrapping round
    assert list(dataset.skipped) == [written / "images" / "missing.png"]
    assert "no such file" in dataset.skipped[written / "images" / "missing.png"]
    relative_only = tmp_path / "relative.txt"
    relative_only.write_text("\n".join(lines[:3]))
    with pytest.raises(FileNotFoundError, match="relative paths need root"):
        ImageFileList(relative_only)  # relative to the working directory: nothing there


# --- config and factory -------------------------------------------------------------------------------------

def test_build_dataset_from_config_dicts(written):
    procedural = build_dataset({"kind": "procedural", "size": 32, "crop": 24, "random_crop": True, "flip": True,
                                "length": 5, "num_classes": 4, "seed": 1})
    assert len(procedural) == 5 and procedural[0]["image"].shape == (3, 24, 24)
    assert procedural[0]["segmentation"].shape == (24, 24)
    batch = next(iter(DataLoader(procedural, batch_size=5)))
    assert batch["image"].shape == (5, 3, 24, 24) and batch["label"].shape == (5,) and batch["label"].max() < 4
    classes = build_dataset({"kind": "classes", "path": str(written / "images"), "size": 16})
    assert isinstance(classes, ClassFolder) and classes[0]["image"].shape == (3, 16, 16)
    pairs = build_dataset({"kind": "pairs", "path": str(written), "size": 32, "crop": 16})
    assert pairs[0]["segmentation"].shape == (16, 16)
    listed = build_dataset({"kind": "filelist", "path": str(written / "images.txt"), "root": str(written), "size": 32})
    folder = build_dataset(DataConfig(kind="folder", path=str(written / "images"), size=32))
    assert len(listed) == len(folder) == 12


@pytest.mark.parametrize("data, key", [
    ({"kind": "folder", "path": "x", "szie": 3}, "szie"),
    ({"kind": "folder"}, "path"),
    ({"kind": "procedural", "size": 16, "crop": 32}, "crop"),
    ({"kind": "zip", "path": "x"}, "kind"),
    ({"kind": "procedural", "flip": "yes"}, "flip"),
    ({"kind": "folder", "path": "x", "root": "y"}, "root"),
])
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        build_dataset(data)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset({"kind": "folder", "path": str(tmp_path / "nowhere")})


def test_scenes_without_distractors_hold_only_their_class():
    from tamer.data.procedural import ProceduralShapes

    plain = ProceduralShapes(32, 8, max_distractors=0)
    for i in range(8):
        item = plain[i]
        assert set(item["segmentation"].unique().tolist()) <= {0, int(item["label"]) + 1}
    default, explicit = ProceduralShapes(32, 4), ProceduralShapes(32, 4, max_distractors=4)
    assert all(torch.equal(default[i]["image"], explicit[i]["image"]) for i in range(4))
    with pytest.raises(ValueError, match="max_distractors"):
        ProceduralShapes(32, 4, max_distractors=-1)


def test_plain_scenes_are_the_textured_scenes_without_texture():
    from tamer.data.procedural import ProceduralShapes

    textured, plain = ProceduralShapes(32, 6, max_distractors=0), ProceduralShapes(32, 6, max_distractors=0, plain=True)
    textured_steps = []
    for i in range(6):
        a, b = textured[i], plain[i]
        # the same random draws: same label, same geometry
        assert a["label"] == b["label"] and torch.equal(a["segmentation"], b["segmentation"])
        assert torch.equal(a["depth"], b["depth"])
        # solid paint: within one shape, colour changes only with the depth shading, which is smooth (unlike
        # stripes or checkers); the background is a smooth gradient
        image, inside = b["image"], b["edges"][0, :, :-1] < 0  # the pixel and its right neighbour: one object
        step = (image[:, :, 1:] - image[:, :, :-1]).abs().amax(0)
        assert step[inside].max() < 0.1, i
        textured_steps.append((a["image"][:, :, 1:] - a["image"][:, :, :-1]).abs().amax(0)[inside].max())
    assert max(textured_steps) > 0.3  # the same check fails on textured scenes: stripes and checkers
    assert build_dataset({"kind": "procedural", "size": 32, "length": 2, "plain": True}).plain


def test_object_centric_scenes_hold_one_large_shape_near_the_centre():
    from scipy import ndimage

    from tamer.data.procedural import ProceduralShapes

    framed = ProceduralShapes(32, 40, max_distractors=0, plain=True, object_centric=True)
    default = ProceduralShapes(32, 40, max_distractors=0, plain=True)
    areas = {"framed": [], "default": []}
    for name, data in (("framed", framed), ("default", default)):
        for i in range(len(data)):
            mask = (data[i]["segmentation"] > 0).numpy()
            areas[name].append(mask.mean())
            if name == "framed":
                if SHAPES[int(data[i]["label"])] != "bars":  # a group of bars is one shape of several pieces
                    assert ndimage.label(mask, np.ones((3, 3)))[1] == 1, i
                cy, cx = ndimage.center_of_mass(mask)
                assert 8 <= cy <= 24 and 8 <= cx <= 24, (i, cy, cx)
    assert np.mean(areas["framed"]) > 1.25 * np.mean(areas["default"])  # 0.25 against 0.18 of the picture
    assert build_dataset({"kind": "procedural", "size": 32, "length": 2, "object_centric": True}).object_centric


class _RandomItems(torch.utils.data.Dataset):
    """Items that are nothing but draws from the global generator (as a random crop or flip draws)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(3)


def test_seeded_items_depend_only_on_seed_epoch_index_and_leave_the_global_generator_alone():
    from tamer.train.data_order import SeededItems

    items = SeededItems(_RandomItems(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = items[(1, 2)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    assert torch.equal(items[(1, 2)], first)
    assert not torch.equal(items[(2, 2)], first) and not torch.equal(items[(1, 3)], first)
    torch.manual_seed((7 * 1_000_003 + 1) * 10_000_019 + 2)  # the documented seed of (seed, epoch, index)
    assert torch.equal(torch.rand(3), first)
