"""The Gradio page of ``tamer app``: one tab per model, its controls wired to :mod:`tamer.app.jobs`.

A transformer's tab samples (a class picker for class-conditional models, a map to upload or draw for spatial
ones), shows the grid filling in while the tokens are drawn, and completes an uploaded image; a VQGAN's tab
reconstructs an upload. Each model's runs share one queue of one (``concurrency_id``): one run at a time per
model, the others wait their turn. Bad input is shown as the job's message and the server keeps serving.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from tamer.app import jobs
from tamer.app.labels import class_names, hex_colour, palette, segmentation_names
from tamer.ar.model import Transformer
from tamer.vqgan.model import VQGAN

log = logging.getLogger(__name__)

#: Small samples are shown enlarged; smoothing would blur exactly what a code grid draws.
CSS = ".tamer-pixels img { image-rendering: pixelated; }"


@dataclass
class ServedModel:
    name: str  # the tab's title
    path: str
    model: Transformer | VQGAN


def build_page(models: list[ServedModel], work_dir: Path) -> gr.Blocks:
    """The page for ``models``; every job writes a folder of its own under ``work_dir``."""
    counter = itertools.count()

    def folder(kind: str) -> Path:
        return work_dir / f"{next(counter):05d}-{kind}"

    with gr.Blocks(title="tamer", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("# tamer\nSample from a Taming Transformers model, or put an image through a VQGAN.")
        with gr.Tabs():
            for index, served in enumerate(models):
                with gr.Tab(served.name, id=index):
                    if isinstance(served.model, Transformer):
                        _transformer_tab(served, f"m{index}", folder)
                    else:
                        _vqgan_tab(served, f"m{index}", folder)
    return page


def _describe(served: ServedModel) -> str:
    model = served.model
    if isinstance(model, VQGAN):
        return (f"**{served.path}**: a VQGAN, downsampling factor {model.downsample_factor}, "
                f"{model.vocab_size} codes")
    c = model.conditioning
    kind = {"none": "unconditional", "class": f"class-conditional ({c.num_classes} classes)",
            "spatial": f"conditioned on {c.key} maps",
            "labels": f"conditioned on {c.key} label maps (read exactly)",
            "coord": "conditioned on coordinates"}[c.kind]
    h, w = model.config.image_size
    return (f"**{served.path}**: a transformer, {kind}; trained on {h}×{w} pixels "
            f"({model.config.code_shape[0]}×{model.config.code_shape[1]} codes); larger sizes use the sliding window"
            + ("; trained for classifier-free guidance" if c.classifier_free else ""))


def _transformer_tab(served: ServedModel, key: str, folder: Callable[[str], Path]) -> None:
    model: Transformer = served.model
    c = model.conditioning
    height, width = model.config.image_size
    factor = model.first_stage_model.downsample_factor
    segmentation = c.map_labels is not None
    gr.Markdown(_describe(served))
    with gr.Row():
        with gr.Column(scale=2):
            class_label = upload_map = drawing = gr.State(None)
            if c.kind == "class":
                names = class_names(served.path, c.num_classes, c.class_names)
                class_label = gr.Dropdown([(f"{k}: {name}", k) for k, name in enumerate(names)], value=0,
                                          label="Class", elem_id=f"{key}-class")
            if c.takes_map:
                with gr.Tabs():
                    with gr.Tab("Upload a map"):
                        what = "an 8-bit label-map PNG (pixel values are labels)" if segmentation else "an image"
                        upload_map = gr.File(label=f"Condition: {what}", elem_id=f"{key}-map")
                    if segmentation:
                        with gr.Tab("Draw a map"):
                            drawing = _drawing_canvas(served, (height, width), f"{key}-draw")
            with gr.Row():
                seed = gr.Number(0, precision=0, label="Seed", info="sample i uses seed + i", elem_id=f"{key}-seed")
                num_samples = gr.Slider(1, 16, value=4, step=1, label="Samples", elem_id=f"{key}-n")
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=1.0, step=0.05, label="Temperature")
                top_k = gr.Number(0, precision=0, minimum=0, label="Top-k", info="0: off, 1: greedy",
                                  elem_id=f"{key}-topk")
                top_p = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Top-p", info="1: off")
            cfg_scale = gr.Slider(1.0, 10.0, value=1.0, step=0.1, label="Guidance scale", interactive=c.classifier_free,
                                  info="1: off" if c.classifier_free else "this model was not trained for guidance")
            with gr.Row():
                pixel_height = gr.Number(height, precision=0, step=factor, label="Height (pixels)",
                                         info=f"a multiple of {factor}")
                pixel_width = gr.Number(width, precision=0, step=factor, label="Width (pixels)",
                                        info="a drawn map's; an uploaded map keeps its own" if c.takes_map
                                        else "past the training size: sliding window")
            sample_button = gr.Button("Sample", variant="primary", elem_id=f"{key}-sample")
            with gr.Accordion("Image completion: keep the top rows of an image, sample the rest", open=True):
                completion_image = gr.File(label="Image to complete", elem_id=f"{key}-completion")
                keep_rows = gr.Slider(0, model.config.code_shape[0] - 1, value=model.config.code_shape[0] // 2,
                                      step=1, label="Code rows to keep")
                complete_button = gr.Button("Complete", elem_id=f"{key}-complete")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Samples", format="png", columns=4, object_fit="contain", height="auto",
                                 elem_id=f"{key}-gallery", elem_classes="tamer-pixels")
            status = gr.Markdown(elem_id=f"{key}-status")
            download = gr.File(label="Download: PNGs, codes.npy and the settings", elem_id=f"{key}-download")

    controls_inputs = [seed, num_samples, temperature, top_k, top_p, cfg_scale, pixel_height, pixel_width]

    def controls(seed, num_samples, temperature, top_k, top_p, cfg_scale, pixel_height, pixel_width) -> jobs.Controls:
        fields = {"seed": seed, "top-k": top_k, "height": pixel_height, "width": pixel_width}
        missing = [name for name, value in fields.items() if value is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: give a number")
        return jobs.Controls(int(seed), int(num_samples), float(temperature), int(top_k) or None,
                             None if float(top_p) >= 1.0 else float(top_p), float(cfg_scale),
                             (int(pixel_height), int(pixel_width)))

    def condition_map(out: Path, upload: str | None, drawn, size: tuple[int, int]) -> str | None:
        """The uploaded map, else the drawing (when anything is painted) as a label-map PNG of ``size``."""
        if upload is not None:
            return upload
        painted = _painted(drawn)
        if painted is None:
            return None
        return str(jobs.drawing_to_label_map(painted, c.map_labels, size,
                                             out.with_name(out.name + "-map.png")))

    def on_sample(label, upload, drawn, *values):
        out = folder("sample")

        def job(show):
            settings = controls(*values)
            return jobs.sample(model, out, settings, label, condition_map(out, upload, drawn, settings.size), show)
        yield from _stream(job, upload)

    def on_complete(label, upload, drawn, image, rows, *values):
        if image is None:
            raise gr.Error("Image completion: upload an image first")
        out = folder("complete")

        def job(show):
            settings = controls(*values)
            return jobs.complete(model, out, settings, image, int(rows), label,
                                 condition_map(out, upload, drawn, settings.size), show)
        yield from _stream(job, upload, image)

    outputs = [gallery, status, download]
    queue_of_model = f"{key}-runs"
    sample_button.click(on_sample, [class_label, upload_map, drawing, *controls_inputs], outputs,
                        concurrency_id=queue_of_model, concurrency_limit=1)
    complete_button.click(on_complete, [class_label, upload_map, drawing, completion_image, keep_rows,
                                        *controls_inputs], outputs, concurrency_id=queue_of_model, concurrency_limit=1)


def _drawing_canvas(served: ServedModel, size: tuple[int, int], elem_id: str):
    """A canvas whose brush paints only the model's label colours, with a legend of their names."""
    count = served.model.conditioning.map_labels
    colours = [hex_colour(rgb) for rgb in palette(count)]
    names = segmentation_names(served.path, count)

    def text_colour(rgb):  # white on dark labels
        return "#fff" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140 else "#000"

    legend = " ".join(f'<span style="background:{hex_colour(rgb)};color:{text_colour(rgb)};padding:1px 6px;'
                      f'border-radius:3px;white-space:nowrap">{k} {name}</span>'
                      for k, (rgb, name) in enumerate(zip(palette(count), names)))
    gr.HTML(f"<div>Brush colours are labels: {legend}. Unpainted places are label 0.</div>")
    scale = max(1, 256 // max(size))
    return gr.ImageEditor(canvas_size=(size[1] * scale, size[0] * scale), fixed_canvas=True, type="numpy",
                          image_mode="RGBA", sources=(), layers=False, transforms=(),
                          brush=gr.Brush(colors=colours, default_color=colours[1 % count], color_mode="fixed"),
                          label="Segmentation map (drawn at the height and width set below)", elem_id=elem_id)


def _painted(drawn: dict | None) -> np.ndarray | None:
    """The strokes of an image editor's value, RGBA, without the canvas behind them (None when nothing is painted).

    The composite would paint the canvas's white background over the unpainted places, which must stay label 0.
    """
    layers = [np.asarray(layer) for layer in (drawn or {}).get("layers") or [] if layer is not None]
    layers = [layer for layer in layers if layer.ndim == 3 and layer.shape[2] == 4 and layer[..., 3].any()]
    if not layers:
        return None
    painted = layers[0].copy()
    for layer in layers[1:]:
        over = layer[..., 3] >= 128
        painted[over] = layer[over]
    return painted


def _vqgan_tab(served: ServedModel, key: str, folder: Callable[[str], Path]) -> None:
    model: VQGAN = served.model
    gr.Markdown(_describe(served))
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.File(label="Image", elem_id=f"{key}-image")
            button = gr.Button("Reconstruct", variant="primary", elem_id=f"{key}-reconstruct")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Input and reconstruction", format="png", columns=2, height="auto",
                                 elem_id=f"{key}-gallery", elem_classes="tamer-pixels")
            status = gr.Markdown(elem_id=f"{key}-status")
            codes = gr.Dataframe(label="Code grid", interactive=False, elem_id=f"{key}-codes")
            download = gr.File(label="Download: input, reconstruction and codes.npy")

    def on_reconstruct(upload):
        if upload is None:
            raise gr.Error("Reconstruct: upload an image first")
        try:
            result = jobs.reconstruct(model, folder("reconstruct"), upload)
        except ValueError as error:
            raise gr.Error(_readable(error, upload), print_exception=False) from None
        return [str(p) for p in result.images], result.summary, result.codes.tolist(), str(result.archive)

    button.click(on_reconstruct, [image], [gallery, status, codes, download], concurrency_id=f"{key}-runs",
                 concurrency_limit=1)


def _readable(error: Exception, *uploads: str | None) -> str:
    """The job's message, with an upload's temporary path shortened to its file name."""
    message = str(error)
    for upload in uploads:
        if upload:
            message = message.replace(str(upload), Path(upload).name)
    return message


def _stream(job: Callable[[jobs.Show], jobs.Result], *uploads: str | None) -> Iterator[tuple]:
    """Run ``job`` in a thread and yield ``(gallery, status, download)``: previews while it draws, then the result.

    Only the newest waiting preview is shown, so a slow browser never falls behind the sampler.
    """
    updates: queue.Queue = queue.Queue()

    def show(images, done, total):
        updates.put(("preview", (images, done, total)))

    def work():
        try:
            with torch.inference_mode():
                updates.put(("done", job(show)))
        except Exception as error:  # handed to the page's thread, which shows it
            updates.put(("error", error))

    threading.Thread(target=work, daemon=True, name="tamer-app-job").start()
    while True:
        kind, value = updates.get()
        while kind == "preview" and not updates.empty():
            kind, value = updates.get()
        if kind == "preview":
            images, done, total = value
            yield images, f"drawing tokens: {done} of {total}", None
        elif kind == "done":
            yield [str(p) for p in value.images], value.summary, str(value.archive)
            return
        elif isinstance(value, ValueError):
            raise gr.Error(_readable(value, *uploads), print_exception=False)
        else:
            log.error("tamer app: the job failed", exc_info=value)
            raise gr.Error(f"the job failed: {type(value).__name__}: {value}")
