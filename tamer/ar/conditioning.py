"""Condition stages: what the transformer reads before the image tokens.

Every stage turns a condition into token ids in the GPT's vocabulary, ``token_offset + own id``:

- ``none``: one start token (the original's ``SOSProvider``).
- ``class``: one token per class label (the original's ``Labelator``).
- ``spatial``: a map (segmentation labels, depth, edges, a low-resolution image) tokenized by a second VQGAN
  (the original's ``cond_stage_model``); its tokens form a grid, so the sliding-window sampler can crop it.
- ``labels``: a label map (segmentation) read exactly: each cell of the image's code grid becomes its most frequent
  label, one id per label. No second VQGAN to train, and nothing of the map is lost at the code grid's resolution.
- ``coord``: a map of each pixel's place in the full image, in [0, 1), pooled and rounded to ``coord_levels``
  levels (the original's ``CoordStage``), used to train on crops of large images.

With ``classifier_free`` one more id, ``token_offset + stage vocabulary``, stands for "no condition": training
replaces a whole condition by it now and then, and guided sampling runs conditional and null rows together.

The original put condition ids at offset 0, sharing embeddings with image tokens; imported checkpoints keep
that, new models default to an offset past the image codebook, so each id has its own embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from tamer.config import checked_keywords
from tamer.report import colour_labels
from tamer.vqgan.model import VQGAN, VQGANConfig, one_hot_labels

ConditionKind = Literal["none", "class", "spatial", "labels", "coord"]


@checked_keywords
@dataclass
class ConditioningConfig:
    kind: ConditionKind = "none"
    # The data key that holds the condition (label, segmentation, depth, edges, lowres, coord); unused for none.
    key: str = "label"
    num_classes: int = 0
    # The second VQGAN of a spatial condition (its weights live in the transformer's checkpoint).
    stage: VQGANConfig | None = None
    # Resize spatial maps to this square size before tokenizing (the original's downsample_cond_size); -1: keep.
    downsample_size: int = -1
    # A labels condition: how many labels its maps hold (background included) and the pixels per grid cell (the
    # first stage's downsampling factor, so that condition and image grids coincide).
    num_labels: int = 0
    label_factor: int = 16
    coord_levels: int = 1024
    coord_factor: int = 16
    # Where this stage's ids start in the GPT vocabulary; None: right after the image codebook.
    token_offset: int | None = None
    classifier_free: bool = False
    # A class condition's names in label order (a class folder's folder names), saved with the model so that
    # samples can be asked for by name and grids can name their rows; labels past the names (or all, when None)
    # are known by number only.
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.kind == "class" and self.num_classes < 1:
            raise ValueError("conditioning.num_classes: a class condition needs at least one class")
        if self.kind == "spatial" and self.stage is None:
            raise ValueError("conditioning.stage: a spatial condition needs the VQGAN config of its condition stage")
        if self.kind != "spatial" and self.stage is not None:
            raise ValueError(f"conditioning.stage: only a spatial condition has a stage, not kind={self.kind!r}")
        if self.kind == "labels" and (self.num_labels < 1 or self.label_factor < 1):
            raise ValueError("conditioning.num_labels/label_factor: a labels condition needs at least one label and "
                             "a positive factor")
        if self.kind == "coord" and (self.coord_levels < 1 or self.coord_factor < 1):
            raise ValueError("conditioning.coord_levels/coord_factor: must be positive")
        if self.kind == "none" and self.classifier_free:
            raise ValueError("conditioning.classifier_free: an unconditional model has nothing to drop")
        if self.token_offset is not None and self.token_offset < 0:
            raise ValueError(f"conditioning.token_offset: must be >= 0, got {self.token_offset}")
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)
            if self.kind != "class":
                raise ValueError(f"conditioning.class_names: only a class condition has names, not kind={self.kind!r}")
            if len(self.class_names) > self.num_classes:
                raise ValueError(f"conditioning.class_names: {len(self.class_names)} names for "
                                 f"{self.num_classes} classes")
            if len(set(self.class_names)) != len(self.class_names) or not all(self.class_names):
                raise ValueError("conditioning.class_names: names must be distinct and non-empty")

    @property
    def stage_vocab_size(self) -> int:
        """How many ids the stage itself produces (before the null id)."""
        if self.kind == "none":
            return 1
        if self.kind == "class":
            return self.num_classes
        if self.kind == "coord":
            return self.coord_levels
        if self.kind == "labels":
            return self.num_labels
        return self.stage.vocab_size

    @property
    def takes_map(self) -> bool:
        """Whether a condition is a map given as a file (``tamer sample --cond``, the app's upload)."""
        return self.kind in ("spatial", "labels")

    @property
    def map_labels(self) -> int | None:
        """How many labels a condition's label maps hold (a segmentation condition), else None."""
        if self.kind == "labels":
            return self.num_labels
        if self.kind == "spatial" and self.stage.colorize_nlabels is not None:
            return self.stage.autoencoder.in_channels
        return None

    def first_id(self, image_vocab_size: int) -> int:
        """The first condition id: right after the image codebook, unless ``token_offset`` places it."""
        return image_vocab_size if self.token_offset is None else self.token_offset

    def id_end(self, image_vocab_size: int) -> int:
        """One past the largest condition id (the null id included)."""
        return self.first_id(image_vocab_size) + self.stage_vocab_size + int(self.classifier_free)

    def gpt_vocab_size(self, image_vocab_size: int) -> int:
        """The vocabulary a GPT needs: the image codebook and every condition id."""
        return max(image_vocab_size, self.id_end(image_vocab_size))


class ConditionStage(nn.Module):
    """Base: ``tokens(condition, batch_size)`` gives ``B×L`` ids (or ``B×h×w`` for spatial stages)."""

    spatial = False

    def __init__(self, config: ConditioningConfig, token_offset: int):
        super().__init__()
        self.config = config
        self.token_offset = token_offset

    @property
    def null_token(self) -> int | None:
        return self.token_offset + self.config.stage_vocab_size if self.config.classifier_free else None

    @property
    def vocab_end(self) -> int:
        """One past the largest id this stage (with its null id) can produce."""
        return self.config.id_end(self.token_offset)  # first_id(token_offset) is token_offset, placed or not

    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        raise NotImplementedError

    def null_like(self, tokens: torch.Tensor) -> torch.Tensor:
        """The "no condition" sequence of the same shape, for classifier-free guidance."""
        if self.null_token is None:
            raise ValueError("classifier-free guidance needs a model trained with conditioning.classifier_free")
        return torch.full_like(tokens, self.null_token)


class StartToken(ConditionStage):
    """Unconditional: every sequence begins with the same start token."""

    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        device = condition.device if isinstance(condition, torch.Tensor) else None
        return torch.full((batch_size, 1), self.token_offset, dtype=torch.long, device=device)


class ClassLabel(ConditionStage):
    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        labels = torch.as_tensor(condition, dtype=torch.long).reshape(-1)
        if labels.numel() == 1 and batch_size > 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"class labels: expected {batch_size}, got {labels.numel()}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.config.num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"class label {bad} is outside 0..{self.config.num_classes - 1}")
        return (labels + self.token_offset)[:, None]


class SpatialVQ(ConditionStage):
    """A map tokenized by a frozen VQGAN; segmentation label maps ``B×H×W`` are one-hot encoded first."""

    spatial = True

    def __init__(self, config: ConditioningConfig, token_offset: int):
        super().__init__(config, token_offset)
        # The attribute name matches the original's ``cond_stage_model.*`` keys once nested in the transformer.
        self.model = VQGAN(config.stage)
        self.model.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: always in inference mode
        return self

    def prepare(self, condition: torch.Tensor) -> torch.Tensor:
        """A data-item condition -> the float ``B×C×H×W`` input of the stage VQGAN."""
        channels = self.config.stage.autoencoder.in_channels
        if not condition.is_floating_point():
            condition = one_hot_labels(condition, channels)
        if condition.dim() != 4 or condition.shape[1] != channels:
            raise ValueError(f"spatial condition: expected B×{channels}×H×W, got {tuple(condition.shape)}")
        size = self.config.downsample_size
        if size > 0:
            condition = F.interpolate(condition, size=(size, size))
        return condition.to(self.model.quant_conv.weight.dtype)

    @torch.no_grad()
    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        condition = torch.as_tensor(condition)
        if condition.shape[0] != batch_size:
            raise ValueError(f"spatial condition: batch of {condition.shape[0]}, expected {batch_size}")
        return self.model.encode(self.prepare(condition)) + self.token_offset

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Grid ids -> the stage's reconstruction (RGB preview for segmentation stages)."""
        out = self.model.decode(tokens - self.token_offset)
        if self.config.stage.colorize_nlabels is not None:
            one_hot = F.one_hot(out.argmax(1), out.shape[1]).permute(0, 3, 1, 2).float()
            return self.model.to_rgb(one_hot)
        return out

    def decode_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Grid ids -> label maps ``B×H×W`` (segmentation stages): the map as the transformer is shown it."""
        return self.model.decode(tokens - self.token_offset).argmax(1)


class LabelGrid(ConditionStage):
    """Label maps ``B×H×W`` -> the most frequent label of each ``label_factor``-pixel cell (ties: the lower label)."""

    spatial = True

    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        labels = torch.as_tensor(condition)
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        factor, count = self.config.label_factor, self.config.num_labels
        if labels.is_floating_point() or labels.dim() != 3 or labels.shape[0] != batch_size:
            raise ValueError(f"label maps: expected {batch_size}×H×W integer labels, got {tuple(labels.shape)} "
                             f"{labels.dtype}")
        if labels.shape[1] % factor or labels.shape[2] % factor:
            raise ValueError(f"label maps: {labels.shape[1]}×{labels.shape[2]} is not a multiple of the "
                             f"{factor}-pixel grid")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= count:
            raise ValueError(f"label maps: label {low if low < 0 else high} is outside 0..{count - 1}")
        votes = F.avg_pool2d(one_hot_labels(labels, count), factor)
        return votes.argmax(1) + self.token_offset

    def decode_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Grid ids -> label maps ``B×H×W`` at pixel resolution: the map as the transformer is shown it."""
        factor = self.config.label_factor
        return (tokens - self.token_offset).repeat_interleave(factor, 1).repeat_interleave(factor, 2)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Grid ids -> an RGB preview in [-1, 1], one fixed colour per label."""
        return colour_labels(self.decode_labels(tokens)).to(tokens.device)


class Coordinates(ConditionStage):
    """Coordinates in [0, 1] (``B×1×H×W``) area-pooled by ``coord_factor`` and rounded to ``coord_levels`` ids.

    Rounding can reach ``coord_levels`` only for values within half a level of 1, which the original's maps
    (raster index / pixel count) never hold after pooling; it is clamped to the last id.
    """

    spatial = True

    def tokens(self, condition, batch_size: int) -> torch.Tensor:
        c = torch.as_tensor(condition, dtype=torch.float32)
        if c.dim() != 4 or c.shape[1] != 1 or c.shape[0] != batch_size:
            raise ValueError(f"coordinates: expected {batch_size}×1×H×W, got {tuple(c.shape)}")
        if float(c.min()) < 0.0 or float(c.max()) > 1.0:
            raise ValueError("coordinates: values must lie in [0, 1]")
        factor, levels = self.config.coord_factor, self.config.coord_levels
        c = F.interpolate(c, scale_factor=1 / factor, mode="area").clamp(0.0, 1.0)
        return (c * levels).round().long().clamp_max(levels - 1)[:, 0] + self.token_offset


def build_condition_stage(config: ConditioningConfig, image_vocab_size: int) -> ConditionStage:
    offset = config.first_id(image_vocab_size)
    stages = {"none": StartToken, "class": ClassLabel, "spatial": SpatialVQ, "labels": LabelGrid,
              "coord": Coordinates}
    return stages[config.kind](config, offset)


def coordinate_map(height: int, width: int, top: int = 0, left: int = 0, full_height: int | None = None,
                   full_width: int | None = None) -> torch.Tensor:
    """The ``1×H×W`` coordinate condition of a crop at (``top``, ``left``) of a ``full_height×full_width`` image:
    each pixel's raster index in the full image over the pixel count, as the original's FacesHQ data built it."""
    full_height = height if full_height is None else full_height
    full_width = width if full_width is None else full_width
    rows = torch.arange(top, top + height, dtype=torch.float64)[:, None]
    cols = torch.arange(left, left + width, dtype=torch.float64)[None, :]
    return ((rows * full_width + cols) / (full_height * full_width)).float()[None]
