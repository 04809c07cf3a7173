"""Progress bars that stay readable in logs: a live tqdm bar on a terminal, a whole line every few seconds elsewhere.

tqdm redraws its bar with carriage returns many times a second; written to a file or a CI log that is hundreds of
kilobytes of one endless line. When standard error is not a terminal, :func:`progress_bar` hands tqdm a stream that
turns each redraw into one line and asks for a redraw at most every :data:`LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

#: seconds between progress lines when standard error is not a terminal
LOG_INTERVAL = 10.0

T = TypeVar("T")


class _Lines:
    """A file for tqdm that writes each redraw as one line and drops the blank redraws that clear a bar."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar whose ``set_postfix`` waits for the next timed redraw (tqdm's own redraws at once, every step)."""

    def set_postfix(self, ordered_dict=None, refresh: bool = False, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def progress_bar(iterable: Iterable[T] | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` that prints whole lines, every ``LOG_INTERVAL`` s at most, off a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return tqdm(iterable, file=stream, **kwargs)
    kwargs["mininterval"] = max(kwargs.get("mininterval", 0.0), LOG_INTERVAL)
    kwargs.pop("dynamic_ncols", None)  # there is no terminal width to follow
    kwargs.setdefault("ncols", 110)
    return _LogBar(iterable, file=_Lines(stream), **kwargs)
