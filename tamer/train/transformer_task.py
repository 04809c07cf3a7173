"""Stage 2 as a trainer task: next-token cross-entropy of the GPT over the frozen first stage's codes.

Only the GPT is handed to the trainer (``modules() == {"gpt": ...}``): it alone is optimized, wrapped in DDP,
averaged by EMA and written into training checkpoints. The frozen VQGAN(s) stay inside the :class:`Transformer`
held here, in eval mode and without gradients; they are encoded with in fp32 (outside autocast) and are saved
only in the exported model folder, where they make it loadable on its own.

A batch is either raw data items (``image_key`` and the condition's ``conditioning.key``), tokenized here, or
items of a code cache (:mod:`tamer.data.codes`: ``codes`` and, for spatial conditions, ``cond_tokens``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from tamer.ar.class_names import class_labels
from tamer.ar.model import Transformer
from tamer.ar.sampling import SamplingSettings, sample_tokens, seed_rows
from tamer.data.codes import CODES_KEY, COND_KEY
from tamer.report import labelled_grid

LN2 = math.log(2.0)
#: at most this many samples in a preview grid (class-conditional: the first classes, one sample each)
PREVIEW_SAMPLES = 16
#: the seed of the preview samples, fixed so that grids of successive steps compare
PREVIEW_SEED = 0


def decay_groups(gpt: nn.Module, weight_decay: float) -> list[dict]:
    """The original minGPT's parameter groups: Linear weights decay; biases, LayerNorm, embeddings and the
    position embedding do not."""
    decay, no_decay = set(), set()
    for module_name, module in gpt.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if name == "weight" and isinstance(module, nn.Linear):
                decay.add(full)
            else:
                no_decay.add(full)  # biases, LayerNorm and Embedding weights, pos_emb
    params = {name: p for name, p in gpt.named_parameters() if p.requires_grad}
    return [{"params": [params[n] for n in sorted(decay) if n in params], "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay) if n in params], "weight_decay": 0.0}]


class TransformerTask:
    """Next-token cross-entropy with ``pkeep`` input corruption and, for classifier-free guidance, condition
    dropout; validation is held-out NLL; preview grids are samples with a fixed seed."""

    model_name = "gpt"
    best_metric = ("nll", "min")  # held-out NLL per token picks the exported model

    def __init__(self, model: Transformer, pkeep: float = 1.0, cond_dropout: float = 0.0, image_key: str = "image"):
        # pkeep and cond_dropout are checked where they are read (TransformerRunConfig), before any work
        self.model, self.pkeep, self.cond_dropout, self.image_key = model, pkeep, cond_dropout, image_key
        self.model.train()  # the GPT (dropout) trains; the frozen stages keep themselves in eval mode

    # -- the trainer's interface ---------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"gpt": self.model.transformer}

    def parameter_groups(self, weight_decay: float) -> dict[str, list]:
        """The original minGPT's :func:`decay_groups`: Linear weights decay, the rest does not."""
        return {"gpt": decay_groups(self.model.transformer, weight_decay)}

    def step(self, modules: dict[str, nn.Module], batch: Any, step: int) -> Iterator[tuple[str, torch.Tensor, dict]]:
        codes, cond = self.tokens(batch)
        corrupted = self.model.corrupt(codes, self.pkeep) if self.pkeep < 1.0 else None
        if self.cond_dropout:
            cond = self.model.drop_condition(cond, self.cond_dropout)
        loss = self.model(codes, cond, corrupted, network=modules["gpt"])[1]
        yield "gpt", loss, {"loss": loss.detach(), "bits_per_token": loss.detach() / LN2}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches: Iterator[Any]) -> dict[str, float]:
        total, tokens, images = 0.0, 0, 0
        for batch in batches:
            codes, cond = self.tokens(batch)
            nll = self.model(codes, cond, reduction="none", network=model)[1]
            total += nll.double().sum().item()
            tokens += nll.numel()
            images += nll.shape[0]
        if not tokens:
            return {}
        nll = total / tokens
        height, width = self.model.config.image_size
        return {"nll": nll, "bits_per_token": nll / LN2,
                "bits_per_dim": total / images / LN2 / (height * width * 3)}

    @torch.no_grad()
    def images(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        with self.using(model):
            return {"samples": self.preview(batch)}

    def export(self, model: nn.Module, directory: Path) -> None:
        with self.using(model):
            self.model.save(directory)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # -- tokens ----------------------------------------------------------------------------------------------------
    def tokens(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes B×h×w, condition tokens)`` of a batch of data items or of cached codes."""
        if CODES_KEY in batch:
            codes = batch[CODES_KEY]
        else:
            if self.image_key not in batch:
                raise KeyError(f"image_key: batch has no {self.image_key!r} (keys: {sorted(batch)})")
            with _no_autocast(batch[self.image_key].device):
                codes = self.model.encode_images(batch[self.image_key].float())
        size = codes.shape[0]
        if COND_KEY in batch:
            return codes, batch[COND_KEY]
        conditioning = self.model.conditioning
        condition = None
        if conditioning.kind != "none":
            if conditioning.key not in batch:
                raise KeyError(f"model.conditioning.key: batch has no {conditioning.key!r} (keys: {sorted(batch)})")
            condition = batch[conditioning.key]
        with _no_autocast(codes.device):
            cond = self.model.condition_tokens(condition, size)
        return codes, cond.to(codes.device)

    @contextlib.contextmanager
    def using(self, gpt: nn.Module):
        """The transformer with ``gpt`` (e.g. the EMA copy) in place of its own network, for the duration."""
        own = self.model.transformer
        self.model.transformer = gpt
        try:
            yield self.model
        finally:
            self.model.transformer = own

    # -- previews --------------------------------------------------------------------------------------------------
    def preview(self, batch: Any) -> torch.Tensor:
        """A grid of samples (seed :data:`PREVIEW_SEED`): one per class under its name, or beside their spatial
        conditions (conditions above, samples, then the data's own images decoded from its codes), or
        unconditional."""
        model = self.model
        conditioning = model.conditioning
        device = model.transformer.pos_emb.device
        rows: list[torch.Tensor] = []
        if conditioning.kind == "class":
            labels = torch.arange(min(conditioning.num_classes, PREVIEW_SAMPLES), device=device)
            cond = model.condition_tokens(labels, len(labels))
        elif conditioning.kind == "none":
            cond = model.condition_tokens(None, 8).to(device)
        else:
            codes, cond = self.tokens(batch)
            codes, cond = codes[:8], cond[:8]
            if getattr(model.cond_stage_model, "decode", None) is not None:
                rows.append(_rgb(model.cond_stage_model.decode(cond)))
            rows.append(None)  # the samples go here
            rows.append(_rgb(model.decode_codes(codes)))
        count = cond.shape[0]
        h, w = model.config.code_shape
        try:
            new = sample_tokens(model.transformer, cond.reshape(count, -1), h * w, SamplingSettings(),
                                seed_rows(PREVIEW_SEED, count, device), model.image_vocab_size)
        finally:
            model.transformer.clear_cache()  # the EMA copy's buffers must keep matching the live model's
        samples = _rgb(model.decode_codes(model.grid(new)))
        if conditioning.kind == "class":  # each sample under its class's name, enlarged to be seen
            names = class_labels(conditioning)
            picture = labelled_grid(samples, count, column_labels=[names[k] for k in labels.tolist()],
                                    scale=max(1, 128 // samples.shape[-1]))
            return pil_to_tensor(picture).float() / 127.5 - 1.0
        rows = [samples if row is None else row for row in rows] or [samples]
        return make_grid(torch.cat(rows).float().cpu(), nrow=count, padding=2, pad_value=1.0)


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """Three channels for a grid: gray repeated, more channels cut to the first three."""
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    return images[:, :3]


def _no_autocast(device: torch.device):
    """The frozen stages encode in full precision, whatever the trainer's autocast (codes match the cache's)."""
    return torch.autocast(device.type, enabled=False)
