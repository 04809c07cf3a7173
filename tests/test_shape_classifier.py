"""The judge of class-conditional samples: it learns the built-in classes, and judge_class_samples scores samples
against their asked class (checked with stand-in models whose "samples" are real scenes)."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from tamer.cli import main as cli
from tamer.data import ProceduralShapes
from tamer.data.procedural import SHAPES
from tamer.devices import resolve_precision
from tamer.metrics.shape_classifier import class_accuracy, judge_class_samples, train_shape_classifier

SCENE = {"max_distractors": 0, "plain": True}


@pytest.fixture(scope="module")
def judge():
    return train_shape_classifier(size=32, steps=250, train_images=3000, seed=1, progress=False, **SCENE)


@pytest.fixture(scope="module")
def held_out():
    return ProceduralShapes(32, 200, seed=12345, **SCENE)


def test_the_judge_names_held_out_scenes_far_above_chance(judge, held_out):
    images = torch.stack([held_out[i]["image"] for i in range(len(held_out))])
    labels = torch.stack([held_out[i]["label"] for i in range(len(held_out))])
    assert class_accuracy(judge, images, labels) > 0.4  # chance 0.1; over 0.9 with the demo's 800 steps


class StandIn:
    """A "class-conditional model" whose samples of class c are real scenes of class c + shift."""

    def __init__(self, shift: int):
        pool = ProceduralShapes(32, 400, seed=7, **SCENE)
        self.by_class = {c: [pool[i]["image"] for i in range(len(pool)) if (pool[i]["label"] - shift) % 10 == c]
                         for c in range(10)}
        self.conditioning = SimpleNamespace(num_classes=10)

    def sample(self, labels, n, settings, seed):
        return torch.stack(self.by_class[int(labels[0])][:n])

    def encode_images(self, images):
        return images

    def decode_codes(self, codes):
        return codes


def test_judge_class_samples_scores_samples_against_their_asked_class(judge, held_out):
    right = judge_class_samples(StandIn(shift=0), judge, held_out, samples_per_class=5, cfg_scales=(1.0, 3.0))
    wrong = judge_class_samples(StandIn(shift=1), judge, held_out, samples_per_class=5)
    assert right.metrics["accuracy"]["1"] > 0.4 and wrong.metrics["accuracy"]["1"] < 0.2
    assert set(right.samples) == {1.0, 3.0} and right.samples[1.0].shape == (50, 3, 32, 32)
    # reconstructions through an identity "VQGAN" are the real scenes: the ceiling equals the real accuracy
    assert right.metrics["classifier_on_reconstructions"] == right.metrics["classifier_on_real_held_out"]
    assert right.metrics["chance"] == 0.1
    # per class: every class judged on its own 5 samples, so the classes' shares average to the whole
    per_class = right.metrics["per_class"]
    assert list(per_class) == list(SHAPES)
    for scale in ("1", "3"):
        shares = [figures["accuracy"][scale] for figures in per_class.values()]
        assert [share * 5 for share in shares] == pytest.approx([round(share * 5) for share in shares])
        assert sum(shares) / 10 == pytest.approx(right.metrics["accuracy"][scale])
    ceilings = [figures["on_reconstructions"] for figures in per_class.values()]
    assert None not in ceilings and max(ceilings) == 1.0


def test_eval_classes_command_writes_its_figures(tmp_path):
    from test_likelihood import tiny_transformer

    model = tiny_transformer("class")
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "classes.json"
    assert cli(["eval", "classes", "--model", str(tmp_path / "model"), "--plain", "--max-distractors", "0",
                "-n", "1", "--judge-steps", "3", "--judge-images", "16", "--limit", "8", "--device", "cpu",
                "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["metrics"]["accuracy"]) == {"1"} and saved["protocol"]["scene"]["plain"] is True
    assert saved["protocol"]["precision"] == resolve_precision("auto", "cpu").name  # the default, resolved
    grid = Image.open(tmp_path / "classes-cfg1.png")  # one row per class, one sample each
    assert grid.size == (2 + 18, 2 + 18 * 10)  # 16-pixel samples, 2-pixel padding


def test_eval_classes_refuses_an_unconditional_model(tmp_path, capsys):
    from test_likelihood import tiny_transformer

    tiny_transformer("none").save_pretrained(tmp_path / "model")
    assert cli(["eval", "classes", "--model", str(tmp_path / "model"), "--device", "cpu"]) != 0
    assert "needs a class-conditional Transformer" in capsys.readouterr().err
