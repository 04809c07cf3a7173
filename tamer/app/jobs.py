"""What the web page's buttons do, without Gradio: read the inputs, call the library, write the files to download.

Each job writes into a folder of its own and returns what the page shows. Bad input raises ``ValueError``
(``ImageError`` is one) with a message that names the problem, before any model runs where it can; the page shows
the message and keeps serving. Sampling goes through :func:`tamer.ar.generation.sample_to_folder`, the code path of
``tamer sample``, so a seed gives the page the same pixels as the command line.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tamer.api import encode_images, read_images, reconstruct_images, resize_shorter_side, save_codes
from tamer.app.labels import palette
from tamer.ar.generation import SampleRequest, conditions_for, label_map_to_png, read_condition_map, sample_to_folder
from tamer.ar.model import Transformer
from tamer.ar.sampling import SamplingSettings
from tamer.imageio import read_image, save_image, to_uint8
from tamer.vqgan.model import VQGAN

#: ``show(images, tokens_done, tokens_total)``: a live preview, ``H×W×3`` uint8 per sample.
Show = Callable[[list[np.ndarray], int, int], None]


@dataclass
class Controls:
    """The page's sampling controls."""

    seed: int = 0
    num_samples: int = 4
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    size: tuple[int, int] | None = None  # pixels; None: the training size

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.temperature, self.top_k, self.top_p, self.cfg_scale)


@dataclass
class Result:
    images: list[Path]  # what the gallery shows, in order
    archive: Path  # a zip of everything the job wrote
    summary: str
    codes: np.ndarray | None = None  # the VQGAN job's code grid, h×w


class LivePreview:
    """A sampler callback that decodes the grid drawn so far every few rows; places not yet drawn are grey.

    It takes both callback forms: new tokens in reading order (``B×k``, the plain sampler, after ``prefix``) and
    the whole grid (``B×h×w``, the sliding window).
    """

    def __init__(self, model: Transformer, code_shape: tuple[int, int], show: Show, prefix: torch.Tensor | None = None):
        self.model, self.show = model, show
        self.h, self.w = code_shape
        self.prefix = prefix
        self.given = 0 if prefix is None else prefix.shape[1]
        self.every = max(1, self.h // 8) * self.w  # tokens between previews: an eighth of the rows

    def __call__(self, k: int, so_far: torch.Tensor) -> None:
        done, total = self.given + k + 1, self.h * self.w
        if done < total and done % self.every:
            return
        device = so_far.device
        if so_far.dim() == 3:
            grid = so_far
        else:
            sequence = torch.zeros(so_far.shape[0], total, dtype=torch.long, device=device)
            if self.prefix is not None:
                sequence[:, :self.given] = self.prefix.to(device)
            sequence[:, self.given:done] = so_far
            grid = self.model.grid(sequence, self.h, self.w)
        known = (torch.arange(total, device=device) < done).long()[None]
        known = self.model.grid(known, self.h, self.w) if so_far.dim() == 2 else known.view(1, self.h, self.w)
        images = self.model.decode_codes(grid).float()
        factor = images.shape[-1] // self.w
        mask = F.interpolate(known[:, None].float(), scale_factor=factor, mode="nearest")
        images = images * mask  # 0 is mid-grey in [-1, 1]
        self.show([to_uint8(image) for image in images.cpu()], done, total)


def _code_shape(model: Transformer, size: tuple[int, int]) -> tuple[int, int]:
    """The code grid for ``size`` pixels, with a message in pixels for sizes the model cannot take."""
    code_shape = model.first_stage_model.code_shape(*size)
    trained = tuple(model.config.image_size)
    if code_shape != tuple(model.config.code_shape):
        if size[0] < trained[0] or size[1] < trained[1]:
            raise ValueError(f"size {size[0]}×{size[1]}: smaller than the training size {trained[0]}×{trained[1]}; "
                             "sizes from the training size up are sampled with the sliding window")
        if model.config.token_order != "raster":
            raise ValueError(f"size {size[0]}×{size[1]}: sizes other than the training size {trained[0]}×"
                             f"{trained[1]} need the sliding window, which needs raster token order "
                             f"(this model reads {model.config.token_order!r})")
    return code_shape


def _archive(folder: Path, condition_map: str | None = None) -> Path:
    """A zip of ``folder``, with the spatial condition as given (``condition.png``: uploaded or drawn)."""
    if condition_map is not None:
        shutil.copyfile(condition_map, folder / ("condition" + (Path(condition_map).suffix.lower() or ".png")))
    return Path(shutil.make_archive(str(folder), "zip", folder))


def _request(model: Transformer, controls: Controls, class_label: int | None, condition_map: str | None):
    """The ``tamer sample`` request for the page's inputs; a spatial model samples at its map's size."""
    c = model.conditioning
    if c.kind == "class" and class_label is None:
        raise ValueError(f"this model is class-conditional: pick a class (0..{c.num_classes - 1})")
    if c.takes_map and condition_map is None:
        raise ValueError(f"this model is conditioned on {c.key} maps: upload one"
                         + (" or draw one" if c.map_labels is not None else ""))
    size = tuple(controls.size) if controls.size else tuple(model.config.image_size)
    if condition_map is not None and c.takes_map:
        size = tuple(read_condition_map(condition_map, model).shape[-2:])
    classes = None if class_label is None else [int(class_label)]
    request = SampleRequest(controls.num_samples, classes, condition_map, size, controls.seed, controls.num_samples)
    return request, size


def sample(model: Transformer, out: Path, controls: Controls, class_label: int | None = None,
           condition_map: str | None = None, show: Show | None = None) -> Result:
    """Draw ``controls.num_samples`` images, seeds ``seed, seed + 1, ...``: what ``tamer sample`` draws."""
    if controls.num_samples < 1:
        raise ValueError(f"number of samples: expected at least 1, got {controls.num_samples}")
    request, size = _request(model, controls, class_label, condition_map)
    code_shape = _code_shape(model, size)
    settings = controls.sampling()
    for condition, _ in conditions_for(model, request, size):  # the class and the map, before anything is written
        model.condition_tokens(None if condition is None else condition[:1], 1)
    preview = None if show is None else LivePreview(model, code_shape, show)
    sample_to_folder(model, request, settings, out, progress=False, callback=preview)
    how = "sliding window" if code_shape != tuple(model.config.code_shape) else "training size"
    seeds = range(controls.seed, controls.seed + controls.num_samples)
    return Result([out / f"sample-{s}.png" for s in seeds], _archive(out, condition_map),
                  f"{_count(len(seeds), 'sample')}, {_seeds(seeds)}, {size[0]}×{size[1]} pixels "
                  f"({code_shape[0]}×{code_shape[1]} codes, {how})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _seeds(seeds: range) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}"


def complete(model: Transformer, out: Path, controls: Controls, image_path: str, keep_rows: int,
             class_label: int | None = None, condition_map: str | None = None, show: Show | None = None) -> Result:
    """Keep the top ``keep_rows`` code rows of an uploaded image and sample the rest, one completion per seed."""
    request, size = _request(model, controls, class_label, condition_map)
    code_shape = _code_shape(model, size)
    if not 0 <= keep_rows < code_shape[0]:
        raise ValueError(f"rows to keep: expected 0..{code_shape[0] - 1} of the {code_shape[0]} code rows, "
                         f"got {keep_rows}")
    settings = controls.sampling()
    [(condition, n)] = conditions_for(model, request, size)
    image, _ = read_image(image_path, channels=3)
    image = _cover(image, size)
    images = image[None].expand(n, *image.shape)
    prefix = model.sequence(model.encode_images(images))[:, :keep_rows * code_shape[1]]
    preview = None if show is None else LivePreview(model, code_shape, show, prefix=prefix)
    codes = model.complete_codes(images, keep_rows, condition, settings, controls.seed, callback=preview)
    out.mkdir(parents=True, exist_ok=True)
    save_image(image, out / "input.png")
    paths = [save_image(picture, out / f"sample-{controls.seed + i}.png")
             for i, picture in enumerate(model.decode_codes(codes).float().cpu())]
    np.save(out / "codes.npy", codes.cpu().numpy().astype(np.int32))
    record = {"settings": asdict(settings), "seeds": list(range(controls.seed, controls.seed + n)),
              "keep_rows": keep_rows, "size": list(size), "class": request.classes}
    (out / "completion.json").write_text(json.dumps(record, indent=2) + "\n")
    return Result([out / "input.png", *paths], _archive(out, condition_map),
                  f"{_count(n, 'completion')} of the top {keep_rows} of {code_shape[0]} code rows, "
                  f"{_seeds(range(controls.seed, controls.seed + n))}, {size[0]}×{size[1]} pixels")


def _cover(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``C×H×W`` to cover ``size``, then centre-crop to it."""
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    image = resize_shorter_side(image, round(min(h, w) * scale))
    h, w = image.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return image[:, top:top + size[0], left:left + size[1]]


def drawing_to_label_map(drawing: np.ndarray, num_labels: int, size: tuple[int, int], out: Path) -> Path:
    """A canvas drawing (``H×W×3`` or ``×4``, label colours of :func:`palette`) -> an 8-bit label-map PNG of
    ``size``: each pixel takes the label of the nearest colour, unpainted (transparent) pixels label 0."""
    drawing = np.asarray(drawing)
    if drawing.ndim != 3 or drawing.shape[2] not in (3, 4):
        raise ValueError(f"drawing: expected an RGB or RGBA image, got an array of shape {drawing.shape}")
    colours = np.array(palette(num_labels), dtype=np.int64)
    rgb = drawing[..., :3].astype(np.int64)
    labels = ((rgb[:, :, None, :] - colours[None, None]) ** 2).sum(-1).argmin(-1)
    if drawing.shape[2] == 4:
        labels[drawing[..., 3] < 128] = 0
    resized = Image.fromarray(labels.astype(np.uint8), mode="L").resize((size[1], size[0]), Image.NEAREST)
    return label_map_to_png(torch.from_numpy(np.asarray(resized).copy()), out)


def reconstruct(model: VQGAN, out: Path, image_path: str) -> Result:
    """A VQGAN's reconstruction of an uploaded image, its PSNR and its code grid."""
    notes: list[str] = []
    images, _ = read_images([image_path], model, report=notes.append)
    [(reconstruction, psnr)] = reconstruct_images(model, images)
    codes = encode_images(model, images)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_image(images[0], out / "input.png"), save_image(reconstruction, out / "reconstruction.png")]
    save_codes(codes, out / "codes.npy")
    h, w = codes.shape[1:]
    summary = f"PSNR {psnr:.2f} dB; {h}×{w} codes of {model.vocab_size}"
    if notes:
        summary += " (" + "; ".join(note.replace(str(image_path), Path(image_path).name) for note in notes) + ")"
    return Result(paths, _archive(out), summary, codes[0].numpy())
