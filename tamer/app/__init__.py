"""``tamer app``: a web page (Gradio) to sample from transformers and put images through VQGANs.

``jobs`` does the work without Gradio, ``page`` lays out the page and ``labels`` names classes and label colours;
this module loads the models and serves the page. Gradio is the optional extra ``tamer-vq[app]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence


def serve(model_paths: Sequence[str], host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True):
    """Load ``model_paths`` and serve their page at ``http://host:port``; returns the Gradio app (blocks until it
    is closed unless ``block`` is False)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web app needs Gradio: pip install 'tamer-vq[app]'") from None
    from ..api import load_model
    from .page import ServedModel, build_page

    names = _tab_names(model_paths)
    models = [ServedModel(name, str(path), load_model(path, device=device)) for name, path in zip(names, model_paths)]
    work_dir = Path(tempfile.mkdtemp(prefix="tamer-app-"))
    page = build_page(models, work_dir)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, allowed_paths=[str(work_dir)], prevent_thread_lock=not block,
                ssr_mode=False, footer_links=[])
    return page


def _tab_names(paths: Sequence[str]) -> list[str]:
    """Each model's folder name (with its parent's when two share a name: ``class/model`` and ``seg/model``)."""
    names = [Path(p).name for p in paths]
    return [str(Path(*Path(p).parts[-2:])) if names.count(n) > 1 else n for p, n in zip(paths, names)]
