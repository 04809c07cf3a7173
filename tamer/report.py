"""One static HTML page that shows a run's pictures and figures (no scripts, no network: open it from disk)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the page, caption)
    table: dict[str, object] = field(default_factory=dict)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .lead { color: #555; margin-top: 0; }
section { margin: 2rem 0; } figure { display: inline-block; margin: 0.5rem; vertical-align: top; }
img { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; max-width: 520px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; }
"""


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
        if section.table:
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_value(v))}</td></tr>"
                           for k, v in section.table.items())
            parts.append(f"<table>{rows}</table>")
        for path, caption in section.images:
            parts.append(f"<figure><img src='{html.escape(path)}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
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
