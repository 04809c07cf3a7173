"""What a person looks at: labelled, enlarged picture grids, and one static HTML page that shows a run's pictures
and figures (no scripts, no network: open it from disk)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from tamer.imageio import to_uint8

#: how much grids of small images are enlarged (nearest neighbour, so every pixel stays a crisp square)
GRID_SCALE = 4


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the page, caption)
    table: dict[str, object] = field(default_factory=dict)
    goal: str = ""  # what a good result looks like


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .lead { color: #555; margin-top: 0; }
section { margin: 2rem 0; } .body { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
figure { margin: 0; } .goal { color: #175; font-style: italic; }
img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; max-width: 520px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; }
"""


def labelled_grid(images: torch.Tensor, nrow: int, row_labels: Sequence[str] = (),
                  column_labels: Sequence[str] = (), scale: int = GRID_SCALE, padding: int = 2) -> Image.Image:
    """``images`` (``B×3×H×W`` in [-1, 1]) as a grid of ``nrow`` per row, enlarged ``scale``× with nearest-neighbour
    scaling, each row named on the left by ``row_labels`` and each column on top by ``column_labels``."""
    grid = make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=padding, pad_value=1.0)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    font = ImageFont.load_default(size=max(12, 4 * scale))
    left = max((font.getbbox(label)[2] for label in row_labels), default=-8) + 8
    top = font.size + 8 if column_labels else 0
    body = Image.fromarray(to_uint8(grid))
    picture = Image.new("RGB", (left + body.width, top + body.height), "white")
    picture.paste(body, (left, top))
    draw = ImageDraw.Draw(picture)
    cell_h, cell_w = (images.shape[-2] + padding) * scale, (images.shape[-1] + padding) * scale
    for row, label in enumerate(row_labels):
        draw.text((4, top + padding * scale + row * cell_h + cell_h // 2), label, fill="black", font=font, anchor="lm")
    for column, label in enumerate(column_labels):
        draw.text((left + padding * scale + column * cell_w + cell_w // 2, 4), label, fill="black", font=font,
                  anchor="mt")
    return picture


#: colours of segmentation labels 0, 1, 2, ... (background grey), repeated past the end
LABEL_COLOURS = ((128, 128, 128), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 190, 212), (0, 128, 128), (170, 110, 40))


def colour_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label maps ``B×H×W`` -> ``B×3×H×W`` pictures in [-1, 1], one fixed colour per label."""
    palette = torch.tensor(LABEL_COLOURS, dtype=torch.float32) / 127.5 - 1
    return palette[labels.long().cpu() % len(palette)].permute(0, 3, 1, 2)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(title: str, lead: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='lead'>{html.escape(lead)}</p>"]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.goal:
            parts.append(f"<p class='goal'>{html.escape(section.goal)}</p>")
        parts.append("<div class='body'>")  # each figure beside its pictures
        for path, caption in section.images:
            parts.append(f"<figure><img src='{html.escape(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        if section.table:
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_value(v))}</td></tr>"
                           for k, v in section.table.items())
            parts.append(f"<table>{rows}</table>")
        parts.append("</div></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: str | Path, title: str, lead: str, sections: list[Section]) -> Path:
    """Write the page; image paths are relative to its folder, and any that is missing is an error."""
    path = Path(path)
    missing = [p for s in sections for p, _ in s.images if not (path.parent / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: the page would show missing images: {', '.join(missing)}")
    path.write_text(render(title, lead, sections))
    return path
