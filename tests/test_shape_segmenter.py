"""The judge of segmentation-conditional samples: mean_iou is the usual confusion-matrix mIoU, the segmenter learns
the built-in scenes, and judge_segmentation_samples scores samples against their maps (stand-in models whose
"samples" are real scenes: of their own map, or of another's)."""

import pytest
import torch

from tamer.data import ProceduralShapes
from tamer.metrics.shape_classifier import tile_2x2
from tamer.metrics.shape_segmenter import judge_segmentation_samples, mean_iou, train_shape_segmenter

SCENE = {"max_distractors": 0, "plain": True, "object_centric": True}


def test_mean_iou_is_the_confusion_matrix_miou():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    predicted = torch.tensor([[[0, 0, 0, 1], [0, 0, 2, 1]]])
    # label 0: 4 right of 5 predicted, 4 true -> 4/5; label 1: 2 of 2 predicted, 4 true -> 2/4; label 2: 0/1
    assert mean_iou(predicted, target, 3) == pytest.approx((4 / 5 + 2 / 4 + 0) / 3)
    assert mean_iou(target, target, 11) == 1.0  # labels in neither map are left out


@pytest.fixture(scope="module")
def segmenter():
    return train_shape_segmenter(size=32, steps=500, train_images=2000, seed=1, progress=False, **SCENE)


@pytest.fixture(scope="module")
def scenes():
    data = ProceduralShapes(32, 24, seed=12345, **SCENE)
    return {key: torch.stack([data[i][key] for i in range(len(data))]) for key in ("image", "segmentation")}


def test_the_segmenter_reads_held_out_scenes(segmenter, scenes):
    miou = mean_iou(segmenter.predict(scenes["image"]), scenes["segmentation"], 11)
    background_only = mean_iou(torch.zeros_like(scenes["segmentation"]), scenes["segmentation"], 11)
    assert miou > 0.4 > background_only  # about 0.9 with the demo's 800 steps on 8000 scenes


def test_a_segmenter_trained_on_canvases_reads_canvases_the_other_cannot(segmenter, scenes):
    canvas_judge = train_shape_segmenter(size=32, steps=500, train_images=2000, seed=1, progress=False,
                                         canvases=True, **SCENE)
    images, maps = tile_2x2(scenes["image"]), tile_2x2(scenes["segmentation"])
    on_canvases = mean_iou(canvas_judge.predict(images), maps, 11)
    assert on_canvases > 0.4 and on_canvases > mean_iou(segmenter.predict(images), maps, 11) + 0.2


def test_tile_2x2_puts_four_items_in_reading_order():
    items = torch.arange(8).reshape(8, 1, 1).expand(8, 2, 2)
    canvases = tile_2x2(items)
    assert canvases.shape == (2, 4, 4)
    assert canvases[1].tolist() == [[4, 4, 5, 5], [4, 4, 5, 5], [6, 6, 7, 7], [6, 6, 7, 7]]


def test_canvases_need_a_batch_of_whole_canvases(scenes):
    with pytest.raises(ValueError, match="canvases: .* batch_size 6"):
        train_shape_segmenter(steps=1, batch_size=6, scenes=scenes, progress=False, canvases=True)


class StandIn:
    """A "segmentation-conditional model" whose sample for map i is the real scene of map i + shift."""

    def __init__(self, scenes, shift: int):
        self.scenes, self.shift = scenes, shift

    def sample(self, maps, count, settings, seed, code_shape=None):
        index = next(i for i in range(len(self.scenes["segmentation"]))
                     if torch.equal(self.scenes["segmentation"][i], maps[0]))
        return self.scenes["image"][(index + self.shift) % len(self.scenes["image"])][None].expand(count, -1, -1, -1)

    def encode_images(self, images):
        return images

    def decode_codes(self, codes):
        return codes


def test_samples_that_follow_their_maps_score_as_real_scenes_and_others_do_not(segmenter, scenes):
    following = judge_segmentation_samples(StandIn(scenes, 0), segmenter, scenes, per_map=2).metrics
    assert following["miou"] == pytest.approx(following["segmenter_on_real_held_out"])
    ignoring = judge_segmentation_samples(StandIn(scenes, 5), segmenter, scenes, per_map=2).metrics
    assert ignoring["miou"] < following["miou"] - 0.2
