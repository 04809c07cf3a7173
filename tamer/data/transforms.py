"""The geometry every dataset shares: shortest-side resize, square crop, horizontal flip.

One set of random parameters is drawn per sample and applied to the image *and* every map aligned with it
(segmentation, depth, edges), so a label map never drifts from its image. torchvision's transforms v2 do the work:
maps wrapped as ``tv_tensors.Mask`` are resized with nearest neighbours (labels stay labels), images with antialiased
bicubic interpolation. Randomness comes from torch's global generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

#: keys resized like pictures (antialiased bicubic, then clamped to [-1, 1])
IMAGE_KEYS = ("image", "depth")
#: keys resized like label maps (nearest), so their values stay in their set
MASK_KEYS = ("segmentation", "edges")


class ImageTransform:
    """Resize the shorter side to ``size``, crop ``crop``×``crop`` (centre, or random), optionally flip left-right.

    ``size=None`` skips the resize; ``crop=None`` crops to ``size`` (a square, the usual training input), and with
    both None nothing changes. Call it on a sample dict: keys in ``IMAGE_KEYS`` and ``MASK_KEYS`` are transformed
    together, any other key (``"label"``) passes through.
    """

    def __init__(self, size: int | None = None, crop: int | None = None, random_crop: bool = False,
                 flip: bool = False):
        if size is not None and size < 1:
            raise ValueError(f"size: expected a positive side length or None, got {size}")
        if crop is not None and crop < 1:
            raise ValueError(f"crop: expected a positive side length or None, got {crop}")
        if size is not None and crop is not None and crop > size:
            raise ValueError(f"crop: {crop} is larger than the resized shorter side (size={size})")
        self.size, self.crop, self.random_crop, self.flip = size, crop if crop is not None else size, random_crop, flip
        steps: list[v2.Transform] = []
        if size is not None:
            steps.append(v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
        if self.crop is not None:
            steps.append(v2.RandomCrop(self.crop) if random_crop else v2.CenterCrop(self.crop))
        if flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
        self.pipeline = v2.Compose(steps) if steps else v2.Identity()

    def __call__(self, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spatial: dict[str, torch.Tensor] = {}
        for key, value in sample.items():
            if key in IMAGE_KEYS:
                spatial[key] = tv_tensors.Image(value)
            elif key in MASK_KEYS:
                spatial[key] = tv_tensors.Mask(value)
        if not spatial:
            return dict(sample)
        sizes = {tuple(value.shape[-2:]) for value in spatial.values()}
        if len(sizes) > 1:
            raise ValueError(f"maps of different sizes cannot be transformed together: "
                             f"{ {key: tuple(value.shape[-2:]) for key, value in spatial.items()} }")
        (h, w), = sizes
        if self.size is None and self.crop is not None and min(h, w) < self.crop:
            raise ValueError(f"a {h}×{w} image is smaller than crop={self.crop}; set size to resize first")
        out = dict(sample)
        for key, value in self.pipeline(spatial).items():
            value = value.as_subclass(torch.Tensor)
            out[key] = value.clamp(-1, 1) if key in IMAGE_KEYS else value
        return out

    def __repr__(self) -> str:
        return (f"ImageTransform(size={self.size}, crop={self.crop}, random_crop={self.random_crop}, "
                f"flip={self.flip})")
