"""Stage 1 as a trainer task: the VQGAN (generator) and its discriminator, with live codebook statistics."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid

from tamer.metrics.codebook import codebook_statistics
from tamer.metrics.tally import ReconstructionTally
from tamer.train.distributed import all_reduce_sum
from tamer.vqgan.loss import VQGANLoss
from tamer.vqgan.model import VQGAN, one_hot_labels


class VQGANTask:
    """Generator step (reconstruction + perceptual + adaptive GAN + codebook losses), then discriminator step."""

    model_name = "vqgan"
    best_metric = ("psnr", "max")  # held-out PSNR picks the exported model (LPIPS may lack its weights)

    def __init__(self, model: VQGAN, loss: VQGANLoss, image_key: str = "image", usage_window: int = 100):
        self.model, self.loss, self.image_key = model, loss, image_key
        self.recent_counts: deque[torch.Tensor] = deque(maxlen=usage_window)

    def modules(self) -> dict[str, nn.Module]:
        return {"vqgan": self.model, "discriminator": self.loss.discriminator}

    def parameter_groups(self, weight_decay: float) -> dict[str, list]:
        return {name: [p for p in module.parameters() if p.requires_grad] for name, module in
                (("generator", self.model), ("discriminator", self.loss.discriminator))}

    def _images(self, batch: Any) -> torch.Tensor:
        if self.image_key not in batch:
            raise KeyError(f"batch has no {self.image_key!r} (keys: {sorted(batch)}); set image_key in the config")
        images = batch[self.image_key]
        if not images.is_floating_point():  # a label map B×H×W: one-hot over the model's channels
            images = one_hot_labels(images, self.model.config.autoencoder.in_channels)
        return images

    def step(self, modules: dict[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor, dict]]:
        images = self._images(batch)
        out = modules["vqgan"](images)
        loss, logs = self.loss.generator_loss(images, out.reconstruction, out.quantizer_loss, self.model.last_layer,
                                              step)
        logs.update(self._live_usage(out.indices))
        yield "generator", loss, logs
        if self.loss.discriminator_active(step):
            d_loss, d_logs = self.loss.discriminator_loss(images, out.reconstruction, step,
                                                          discriminator=modules["discriminator"])
            yield "discriminator", d_loss, d_logs

    def _live_usage(self, indices: torch.Tensor) -> dict[str, float]:
        """Codebook statistics over the last ``usage_window`` steps, counted on every rank."""
        counts = torch.bincount(indices.flatten(), minlength=self.model.vocab_size).float()
        self.recent_counts.append(all_reduce_sum(counts).cpu())
        return codebook_statistics(torch.stack(list(self.recent_counts)).sum(0))

    def state_dict(self) -> dict:
        return {"recent_counts": list(self.recent_counts)}

    def load_state_dict(self, state: dict) -> None:
        self.recent_counts.clear()
        self.recent_counts.extend(state["recent_counts"])

    @torch.no_grad()
    def validate(self, model: nn.Module, batches: Iterator[Any]) -> dict[str, float]:
        tally = ReconstructionTally(model.vocab_size, self.loss.perceptual_loss)
        label_agreement = None
        for batch in batches:
            images = self._images(batch).float()
            out = model(images)
            reconstruction = out.reconstruction.float().clamp(-1, 1)
            tally.add(images, reconstruction, out.indices)
            if hasattr(model, "colorize") and images.shape[1] > 3:  # segmentation: how many labels come back
                agree = (reconstruction.argmax(1) == images.argmax(1)).flatten(1).float().mean(1).sum().item()
                label_agreement = (label_agreement or 0.0) + agree
        metrics = tally.metrics()
        if label_agreement is not None:
            metrics["label_accuracy"] = label_agreement / tally.images
        return metrics

    @torch.no_grad()
    def images(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        images = self._images(batch)[:8].float()
        reconstruction = model(images).reconstruction.float().clamp(-1, 1)
        if hasattr(model, "colorize") and images.shape[1] > 3:
            labels = one_hot_labels(reconstruction.argmax(1), reconstruction.shape[1])
            images, reconstruction = model.to_rgb(images), model.to_rgb(labels)
        grid = make_grid(torch.cat([images, reconstruction]), nrow=images.shape[0], padding=2, pad_value=1.0)
        return {"inputs-reconstructions": grid}

    def export(self, model: nn.Module, directory: Path) -> None:
        model.save(directory)
