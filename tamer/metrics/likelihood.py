"""Held-out likelihood of a stage-2 Transformer: NLL per token (nats), bits per token and bits per dimension.

Every image is encoded by the model's own first stage; the GPT's next-token distribution over the image codebook
(the condition ids get no probability, as in training) gives ``-log p(code)`` for each token. Reported over the
whole set:

- ``nll``: mean NLL per image token, in nats (what training logs as ``loss``);
- ``bits_per_token``: the same in bits (``nll / ln 2``);
- ``bits_per_dim``: the bits of a whole image's code sequence divided by its ``H×W×3`` pixel values. It counts
  the *codes* only (the VQGAN's reconstruction error is not part of it), so it compares transformers over the same
  VQGAN, not with the bits/dim of pixel-space likelihood models.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from tamer.devices import FORCED, Precision, autocast, resolve_precision
from tamer.metrics.results import EvalResult, library_versions
from tamer.nn.gpt import weights_held_in
from tamer.progress import progress_bar

LN2 = math.log(2.0)


def nats_to_bits(nats: float | torch.Tensor) -> float | torch.Tensor:
    return nats / LN2


def bits_per_dim(nats_per_image: float | torch.Tensor, height: int, width: int, channels: int = 3):
    """The bits of one image's tokens (``nats_per_image`` summed over its tokens) per pixel value."""
    return nats_per_image / LN2 / (height * width * channels)


def batch_token_nll(model: torch.nn.Module, images: torch.Tensor, condition=None,
                    precision: Precision | None = None) -> torch.Tensor:
    """NLL in nats of every image token of ``images`` (``B×C×H×W``), ``B×N``; the images are encoded in fp32
    (the codes training saw), the transformer runs under ``precision``'s autocast with its weights held in that
    precision, as when sampling (:func:`tamer.nn.gpt.weights_held_in`)."""
    precision = precision or Precision("fp32", FORCED)
    with torch.autocast(images.device.type, enabled=False):
        codes = model.encode_images(images)
    with autocast(images.device, precision), weights_held_in(model.transformer, precision.dtype):
        return model.token_nll(codes, condition).float()


@torch.inference_mode()
def evaluate_likelihood(model: torch.nn.Module, dataset: Dataset, *, limit: int | None = None, batch_size: int = 16,
                        num_workers: int = 0, image_key: str = "image", data_protocol: dict | None = None,
                        progress: bool = True, precision: str = "fp32") -> EvalResult:
    """Held-out NLL of ``model`` (a :class:`~tamer.ar.model.Transformer`, on its device) over ``dataset``
    (its first ``limit`` items). Items hold ``image_key`` and, for a conditional model, its condition's key.
    ``precision`` is the model's autocast (``auto``: bf16 where it is fast); the protocol records the one resolved."""
    if not (hasattr(model, "token_nll") and hasattr(model, "encode_images")):
        raise ValueError(f"likelihood evaluation needs a Transformer, got {type(model).__name__}")
    model.eval()
    device = model.transformer.pos_emb.device
    chosen = resolve_precision(precision, device)
    conditioning = model.config.conditioning
    height, width = model.config.image_size
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit: expected a positive number of images, got {limit}")
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    total, tokens, images = 0.0, 0, 0
    per_image: list[torch.Tensor] = []
    with weights_held_in(model.transformer, chosen.dtype):  # cast (and packed) once, not per batch
        for batch in progress_bar(loader, desc="NLL", unit="batch", disable=not progress, dynamic_ncols=True):
            if image_key not in batch:
                raise KeyError(f"the data items have no {image_key!r} (keys: {sorted(batch)})")
            pixels = batch[image_key].to(device)
            if tuple(pixels.shape[-2:]) != (height, width):
                raise ValueError(f"images are {pixels.shape[-2]}×{pixels.shape[-1]}, the model was trained on "
                                 f"{height}×{width}; evaluate at its training size (--size {height})")
            condition = None
            if conditioning.kind != "none":
                if conditioning.key not in batch:
                    raise ValueError(f"the model is conditioned on {conditioning.key!r} ({conditioning.kind}), but the "
                                     f"data items hold only {', '.join(sorted(batch))}")
                condition = batch[conditioning.key].to(device)
            nll = batch_token_nll(model, pixels, condition, chosen).double()
            total += nll.sum().item()
            tokens += nll.numel()
            images += nll.shape[0]
            per_image.append(nll.sum(1).cpu())
    if not images:
        raise ValueError("the dataset is empty")
    sums = torch.cat(per_image)
    nll = total / tokens
    metrics = {"nll": nll, "bits_per_token": nats_to_bits(nll),
               "bits_per_dim": bits_per_dim(total / images, height, width),
               # the standard error of bits/dim over images: how far another sample of the data could move it
               "bits_per_dim_stderr": bits_per_dim(sums.std().item() / math.sqrt(images), height, width)
               if images > 1 else float("nan")}
    h, w = model.config.code_shape
    protocol = {
        "num_images": images, "tokens_per_image": h * w, "code_shape": [h, w], "image_size": [height, width],
        "image_vocab_size": model.image_vocab_size, "conditioning": conditioning.kind,
        "condition_key": conditioning.key if conditioning.kind != "none" else None,
        "token_order": model.config.token_order,
        "definition": "nll: mean over image tokens of -log p (nats), image-codebook logits only; "
                      "bits_per_dim: sum of token bits per image / (H*W*3); no pkeep noise, no condition dropout",
        "dtype": str(model.transformer.pos_emb.dtype).replace("torch.", ""), "precision": chosen.name,
        "data": data_protocol, "versions": library_versions(),
    }
    return EvalResult(task="likelihood", metrics=metrics, protocol=protocol)
