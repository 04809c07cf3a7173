"""A small CNN that tells the built-in dataset's classes apart: the judge of class-conditional samples.

Trained on real ``ProceduralShapes`` images in a minute or two on a CPU, it answers "does a sample of class k look
like class k?" (class accuracy of samples, far above chance when conditioning works), and its penultimate layer is
a stand-in feature network (``FD_shapes``) where no Inception weights exist. Saved like any tamer model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checkpoints import Pretrained


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


def train_shape_classifier(size: int = 32, num_classes: int = 10, steps: int = 600, batch_size: int = 64,
                           seed: int = 0, lr: float = 2e-3, max_distractors: int = 4,
                           progress: bool = True) -> ShapeClassifier:
    """Train on ``ProceduralShapes(size, seed=seed, max_distractors=...)`` items drawn fresh each step (no item
    seen twice)."""
    from ..data.procedural import ProceduralShapes

    torch.manual_seed(seed)
    data = ProceduralShapes(size=size, length=steps * batch_size, num_classes=num_classes, seed=seed,
                            max_distractors=max_distractors)
    model = ShapeClassifier(ShapeClassifierConfig(num_classes=num_classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    model.train()
    for batch in tqdm(loader, total=steps, desc="shape classifier", disable=not progress, leave=False):
        images = batch["image"]
        if torch.rand(()) < 0.5:
            images = images.flip(-1)  # labels are mirror-invariant; samples need not match the data's handedness
        loss = F.cross_entropy(model(images)[1], batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def class_accuracy(classifier: ShapeClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of ``images`` the classifier assigns to ``labels``."""
    return (classifier.predict(images).cpu() == labels.cpu()).float().mean().item()
