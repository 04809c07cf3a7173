"""``tamer app``: a web page (Gradio) to sample from transformers and put images through VQGANs.

``jobs`` does the work without Gradio, ``page`` lays out the page and ``labels`` names classes and label colours;
this module loads the models and serves the page. Gradio is the optional extra ``tamer-vq[app]``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def serve(model_paths: Sequence[str], host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          block: bool = True):
    """Load ``model_paths`` and serve their page at ``http://host:port`` until interrupted (Ctrl-C or SIGTERM); with
    ``block=False``, return the running Gradio app at once (``.close()`` stops it).

    The jobs' files and Gradio's copies of uploads and outputs live in one temporary folder, removed when the
    server stops (``GRADIO_TEMP_DIR`` is set to it for this process unless already set).
    """
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError("the web app needs Gradio: pip install 'tamer-vq[app]'") from None
    from tamer.api import load_model
    from tamer.app.page import CSS, ServedModel, build_page

    names = _tab_names(model_paths)
    models = [ServedModel(name, str(path), load_model(path, device=device)) for name, path in zip(names, model_paths)]
    work_dir = tempfile.TemporaryDirectory(prefix="tamer-app-")  # removed when the server stops
    # Gradio's copies of uploads and outputs go there too, unless GRADIO_TEMP_DIR says otherwise.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(work_dir.name) / "gradio"))
    page = build_page(models, Path(work_dir.name) / "jobs")
    page.work_dir = work_dir  # lives as long as the page
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, allowed_paths=[work_dir.name], prevent_thread_lock=True,
                    ssr_mode=False, footer_links=[], css=CSS)
    except OSError as error:
        work_dir.cleanup()
        raise ValueError(f"cannot serve on {host}:{port} ({str(error).split('.')[0]}); give another --port") from None
    if not block:
        return page
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop like Ctrl-C, so the files are removed
    try:
        page.block_thread()
    finally:
        page.close()
        work_dir.cleanup()
    return page


def _tab_names(paths: Sequence[str]) -> list[str]:
    """Each model's folder name (with its parent's when two share a name: ``class/model`` and ``seg/model``)."""
    names = [Path(p).name for p in paths]
    return [str(Path(*Path(p).parts[-2:])) if names.count(n) > 1 else n for p, n in zip(paths, names)]
