"""A small segmenter of the built-in dataset's scenes: the judge of samples drawn from a segmentation map.

Trained on real ``ProceduralShapes`` scenes (like the shape classifier, it never sees a reconstruction or a
sample), it labels every pixel of an image with one of the 11 segmentation labels. How well a sample follows the
map it was drawn from is then the mIoU between that map and the judge's segmentation of the sample; the judge's
mIoU on real scenes and on their reconstructions says how much of that a perfect sampler could reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tamer.ar.sampling import SamplingSettings
from tamer.checkpoints import Pretrained
from tamer.metrics.shape_classifier import JUDGE_BLUR, fit_judge, render_training_scenes


@dataclass
class ShapeSegmenterConfig:
    num_labels: int = 11
    width: int = 32


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, stride=stride), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ShapeSegmenter(nn.Module, Pretrained):
    """Images ``B×3×H×W`` in [-1, 1] (sides divisible by 4) -> label logits ``B×labels×H×W``.

    A two-level U-Net: the quarter-resolution level sees a whole shape (which kind is it?), the skips put the
    boundary back where the pixels say.
    """

    model_type = "shape_segmenter"
    config_class = ShapeSegmenterConfig

    def __init__(self, config: ShapeSegmenterConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.enc_full = _block(3, w)
        self.enc_half = _block(w, 2 * w, stride=2)
        self.enc_quarter = nn.Sequential(_block(2 * w, 2 * w, stride=2), _block(2 * w, 2 * w))
        self.dec_half = _block(4 * w, 2 * w)
        self.dec_full = _block(3 * w, w)
        self.head = nn.Conv2d(w, config.num_labels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        full = self.enc_full(images)  # B, w, H, W
        half = self.enc_half(full)  # B, 2w, H/2, W/2
        quarter = self.enc_quarter(half)  # B, 2w, H/4, W/4
        half = self.dec_half(torch.cat([half, F.interpolate(quarter, scale_factor=2.0)], 1))
        full = self.dec_full(torch.cat([full, F.interpolate(half, scale_factor=2.0)], 1))
        return self.head(full)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Label maps ``B×H×W`` (long) for ``images``."""
        self.eval()
        return torch.cat([self(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def train_shape_segmenter(size: int = 32, steps: int = 600, batch_size: int = 32, seed: int = 0, lr: float = 3e-3,
                          train_images: int = 4000, blur: float = JUDGE_BLUR, progress: bool = True,
                          scenes: dict[str, torch.Tensor] | None = None, width: int = 16, canvases: bool = False,
                          **scene) -> ShapeSegmenter:
    """Train on ``train_images`` real ``ProceduralShapes(size, seed=seed, **scene)`` scenes, shown with random
    mirror flips and a random blur of sigma up to ``blur`` pixels (a small tokenizer's samples are blurred; the judge
    must still find the shapes in them). ``scenes``: already rendered ``"image"`` and ``"segmentation"`` tensors to
    learn from instead. ``width`` 16 rather than 32: on the demo's scenes it reads real scenes as well (mIoU 0.94
    against 0.89 after 800 steps) at about 40% of the cost (one thread: 100 s, against 127 s for 400 steps at 32).
    ``canvases``: learn from 2×2 canvases of four scenes instead, to judge sliding-window samples: trained on single
    scenes, the judge reads held-out canvases at mIoU 0.18-0.23 (0.94 on single scenes); trained on canvases, 0.85
    (and 0.76 on single scenes; showing both halves of the time gave about 0.8 on each)."""
    torch.manual_seed(seed)
    if scenes is None:
        scenes = render_training_scenes(size, train_images, seed, ("image", "segmentation"), progress=progress,
                                        **scene)
    model = ShapeSegmenter(ShapeSegmenterConfig(width=width))
    return fit_judge(model, model, scenes["image"], scenes["segmentation"], steps, batch_size, lr, blur,
                     "shape segmenter", progress, canvases)


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, num_labels: int) -> float:
    """mIoU of label maps ``B×H×W``: per label, intersection over union summed over all images, averaged over the
    labels that occur in either (the usual confusion-matrix mIoU, background included)."""
    predicted, target = predicted.flatten().cpu(), target.flatten().cpu()
    both = torch.bincount(target * num_labels + predicted, minlength=num_labels ** 2).reshape(num_labels, num_labels)
    intersection = both.diagonal().float()
    union = both.sum(0).float() + both.sum(1).float() - intersection
    present = union > 0
    return (intersection[present] / union[present]).mean().item()


@dataclass
class SegmentationJudgement:
    """What :func:`judge_segmentation_samples` found: the maps, the samples drawn from them (``per_map`` each, map by
    map) and the figures."""

    maps: torch.Tensor  # N×H×W labels
    images: torch.Tensor  # N×3×H×W, the real scenes of the maps
    samples: torch.Tensor  # N·per_map×3×H×W in [-1, 1]
    metrics: dict


@torch.no_grad()
def judge_segmentation_samples(model, segmenter: ShapeSegmenter, scenes: dict[str, torch.Tensor], per_map: int = 2,
                               top_k: int | None = 40, seed: int = 2000,
                               code_shape: tuple[int, int] | None = None) -> SegmentationJudgement:
    """Sample a segmentation-conditional ``Transformer`` from each of ``scenes["segmentation"]`` (``N×H×W``) and let
    ``segmenter`` label the samples: ``miou`` is the mIoU between the maps and the judge's segmentation of their
    samples. Beside it, the judge's mIoU on the real ``scenes["image"]`` and on their reconstructions through the
    model's VQGAN (what a perfect sampler over these codes could reach). Map ``i`` draws seeds ``seed + i·per_map``
    onwards; ``code_shape`` larger than the model's samples with the sliding window."""

    maps, images = scenes["segmentation"], scenes["image"]
    settings = SamplingSettings(top_k=top_k)
    samples = torch.cat([model.sample(maps[i:i + 1].expand(per_map, -1, -1), per_map, settings,
                                      seed=seed + i * per_map, code_shape=code_shape).float().cpu()
                         for i in range(len(maps))])
    reconstructions = model.decode_codes(model.encode_images(images)).float().cpu()
    labels = segmenter.config.num_labels
    metrics = {"maps": len(maps), "samples_per_map": per_map, "top_k": top_k,
               "miou": mean_iou(segmenter.predict(samples), maps.repeat_interleave(per_map, 0), labels),
               "segmenter_on_real_held_out": mean_iou(segmenter.predict(images), maps, labels),
               "segmenter_on_reconstructions": mean_iou(segmenter.predict(reconstructions), maps, labels)}
    return SegmentationJudgement(maps, images, samples, metrics)
