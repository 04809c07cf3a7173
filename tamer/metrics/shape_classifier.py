"""A small CNN that tells the built-in dataset's classes apart: the judge of class-conditional samples.

Trained on real ``ProceduralShapes`` images in a minute or two on a CPU (over 90% right on held-out scenes), it
answers "does a sample of class k look like class k?" (class accuracy of samples, far above chance when
conditioning works), and its penultimate layer is a stand-in feature network (``FD_shapes``) where no Inception
weights exist. Saved like any tamer model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from tamer.ar.sampling import SamplingSettings
from tamer.checkpoints import Pretrained
from tamer.data.procedural import SHAPES, ProceduralShapes
from tamer.devices import autocast, resolve_memory_format, resolve_precision
from tamer.progress import progress_bar

#: the largest blur sigma (pixels) the judge is trained with
JUDGE_BLUR = 1.5


@dataclass
class ShapeClassifierConfig:
    num_classes: int = 10
    width: int = 32


class ShapeClassifier(nn.Module, Pretrained):
    """Images ``B×3×H×W`` in [-1, 1] (any size ≥ 16) -> ``(features B×4w, logits B×classes)``."""

    model_type = "shape_classifier"
    config_class = ShapeClassifierConfig

    def __init__(self, config: ShapeClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.head = nn.Linear(4 * w, config.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images).mean(dim=(2, 3))
        return features, self.head(features)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self(images[i:i + batch_size])[1].argmax(-1) for i in range(0, len(images), batch_size)])


def render_training_scenes(size: int, count: int, seed: int, keys: tuple[str, ...] = ("image", "label"),
                           progress: bool = True, **scene) -> dict[str, torch.Tensor]:
    """``count`` real ``ProceduralShapes(size, seed=seed, **scene)`` items, rendered once: the ``keys`` stacked."""

    data = ProceduralShapes(size=size, length=count, seed=seed, **scene)
    items = [data[i] for i in progress_bar(range(count), desc="rendering scenes", disable=not progress, leave=False)]
    return {key: torch.stack([item[key] for item in items]) for key in keys}


def train_shape_classifier(size: int = 32, num_classes: int = 10, steps: int = 1000, batch_size: int = 64,
                           seed: int = 0, lr: float = 2e-3, train_images: int = 10_000, blur: float = JUDGE_BLUR,
                           progress: bool = True, scenes: dict[str, torch.Tensor] | None = None,
                           **scene) -> ShapeClassifier:
    """Train on ``train_images`` real ``ProceduralShapes(size, seed=seed, **scene)`` scenes (``scene``: the
    dataset's framing options, ``max_distractors``, ``plain``, ``object_centric``),
    rendered once and shown with random mirror flips and, with ``blur > 0``, a random Gaussian blur of sigma up to
    ``blur`` pixels. The blur makes the judge name the shape rather than its texture: a small tokenizer drops fine
    texture (its reconstructions are blurred), and a judge that needs the texture would call even a perfect
    transformer's samples wrong. It never sees a reconstruction or a sample. ``scenes``: already rendered
    ``"image"`` and ``"label"`` tensors (from :func:`render_training_scenes`) to learn from instead."""
    torch.manual_seed(seed)
    if scenes is None:
        scenes = render_training_scenes(size, train_images, seed, ("image", "label"), num_classes=num_classes,
                                        progress=progress, **scene)
    model = ShapeClassifier(ShapeClassifierConfig(num_classes=num_classes))
    return fit_judge(model, lambda batch: model(batch)[1], scenes["image"], scenes["label"], steps, batch_size, lr,
                     blur, "shape classifier", progress)


def tile_2x2(x: torch.Tensor) -> torch.Tensor:
    """Groups of four consecutive items (``4B×...×H×W``) side by side, 2×2: ``B×...×2H×2W`` canvases."""
    x = x.reshape(-1, 4, *x.shape[1:])
    return torch.cat([torch.cat([x[:, 0], x[:, 1]], -1), torch.cat([x[:, 2], x[:, 3]], -1)], -2)


def fit_judge(model: nn.Module, logits_of, images: torch.Tensor, targets: torch.Tensor, steps: int, batch_size: int,
              lr: float, blur: float, desc: str, progress: bool, canvases: bool = False) -> nn.Module:
    """Train a judge on real ``images`` with cross-entropy against ``targets`` (a label per image, or a label map
    per image, mirrored with it), shown with random mirror flips and a random Gaussian blur of sigma up to
    ``blur`` pixels; ``logits_of(batch)`` is the model's logits. ``canvases`` (label maps only): the batch is shown
    as 2×2 canvases of four scenes (:func:`tile_2x2`), images wider than one scene like a sliding-window sample.
    Returns the model in eval mode."""
    if canvases and (targets.dim() < 3 or batch_size % 4):
        raise ValueError(f"canvases: needs label maps and a batch_size divisible by 4, got targets of shape "
                         f"{tuple(targets.shape)} and batch_size {batch_size}")
    from torchvision.transforms.v2.functional import gaussian_blur

    device = next(model.parameters()).device
    model.to(memory_format=resolve_memory_format("auto", device, [model]))  # on a CPU, its faster layout
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in progress_bar(range(steps), desc=desc, disable=not progress, leave=False):
        pick = torch.randint(len(images), (batch_size,))
        batch, target = images[pick], targets[pick]
        if torch.rand(()) < 0.5:  # labels are mirror-invariant; samples need not match the data's handedness
            batch = batch.flip(-1)
            target = target.flip(-1) if target.dim() > 1 else target
        if canvases:
            batch, target = tile_2x2(batch), tile_2x2(target)
        if blur > 0:
            sigma = float(torch.empty(()).uniform_(0.1, blur))
            batch = gaussian_blur(batch, [5, 5], [sigma, sigma])
        loss = F.cross_entropy(logits_of(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def class_accuracy(classifier: ShapeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` the classifier assigns to ``labels``."""
    return (classifier.predict(images).cpu() == labels.cpu()).float().mean().item()


@dataclass
class ClassJudgement:
    """What :func:`judge_class_samples` found: the samples (one tensor per guidance scale, ``samples_per_class``
    per class in class order) and the figures."""

    samples: dict[float, torch.Tensor]
    metrics: dict

    def grid(self, scale: float) -> torch.Tensor:
        """The samples at guidance ``scale`` as one picture, a row per class."""
        from torchvision.utils import make_grid

        return make_grid(self.samples[scale], nrow=self.metrics["samples_per_class"], padding=2, pad_value=1.0)


@torch.no_grad()
def judge_class_samples(model, classifier: ShapeClassifier, held_out, samples_per_class: int = 8,
                        cfg_scales: tuple[float, ...] = (1.0,), top_k: int | None = 40,
                        seed: int = 1000, precision: str = "fp32") -> ClassJudgement:
    """Sample every class of a class-conditional ``Transformer`` and let ``classifier`` name the samples.

    Besides the accuracy at each guidance scale it reports the classifier's accuracy on the real ``held_out`` scenes
    and on their reconstructions through the model's VQGAN: the latter is the ceiling, since a transformer can only
    produce what the codes can hold. Sample ``i`` of class ``c`` uses seed ``seed + c·n + i`` at every scale.
    ``precision`` is the model's autocast (``auto``: bf16 where it is fast); the classifier runs in fp32."""

    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    chosen = resolve_precision(precision, device)
    n, classes = samples_per_class, model.conditioning.num_classes
    labels = torch.arange(classes).repeat_interleave(n)
    samples = {}
    batch = default_collate([held_out[i] for i in range(len(held_out))])  # each scene rendered once
    real, real_labels = batch["image"], batch["label"]
    with autocast(device, chosen):
        for scale in cfg_scales:
            settings = SamplingSettings(top_k=top_k, cfg_scale=scale)
            samples[scale] = torch.cat([model.sample(torch.full((n,), c), n, settings, seed=seed + c * n).float().cpu()
                                        for c in range(classes)])
        reconstructions = torch.cat([model.decode_codes(model.encode_images(real[i:i + 64])).float().cpu()
                                     for i in range(0, len(real), 64)])
    named = {f"{scale:g}": classifier.predict(images).cpu() == labels for scale, images in samples.items()}
    named_reconstructions = classifier.predict(reconstructions).cpu() == real_labels
    metrics = {"samples_per_class": n, "top_k": top_k, "chance": 1 / classes,
               "accuracy": {scale: hits.float().mean().item() for scale, hits in named.items()},
               "classifier_on_real_held_out": class_accuracy(classifier, real, real_labels),
               "classifier_on_reconstructions": named_reconstructions.float().mean().item(),
               "held_out_images": len(real),
               # where the share named is lost: a class the VQGAN cannot give back caps its row
               "per_class": {class_name(c): {"accuracy": {scale: hits[labels == c].float().mean().item()
                                                          for scale, hits in named.items()},
                                             "on_reconstructions": _share(named_reconstructions[real_labels == c])}
                             for c in range(classes)}}
    return ClassJudgement(samples, metrics)


def class_name(label: int) -> str:
    """The built-in dataset's name of class ``label``."""
    return SHAPES[label] if label < len(SHAPES) else str(label)


def _share(hits: torch.Tensor) -> float | None:
    return hits.float().mean().item() if len(hits) else None  # None: no held-out scene of that class
