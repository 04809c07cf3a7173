"""The demo's stages as a small graph, run side by side in worker processes where the cores allow.

A tiny model leaves much of a second core idle: the demo's 1200-step VQGAN takes 147 s alone on two threads and 180 s
on one core beside another stage (AMD EPYC; all stages: 746 s one after another, 558 s two at a time, BENCHMARKS.md).
So on a CPU the demo runs two stages at a time, each in its own process with half the cores, starting each stage
as soon as what it needs exists. Stages hand each other folders (a trained model saved on disk), never live objects.
"""

from __future__ import annotations

import multiprocessing
import queue
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from tamer.devices import usable_cpus


@dataclass(frozen=True)
class Stage:
    """``work()`` saves a model into the folder ``output`` and returns it, once the stages named in ``after`` are
    done (it finds what they made in their folders). A stage whose ``output`` already holds a model (a finished
    earlier run) is not run again. ``work`` must be picklable: a module-level function or a ``functools.partial``
    of one."""

    name: str
    work: Callable[[], Path]
    output: Path
    after: tuple[str, ...] = ()

    def done(self) -> bool:
        return (self.output / "config.json").is_file()


def lanes_for(device: str) -> tuple[int, int]:
    """``(stages at a time, threads each)``: two on a CPU with two cores or more, one on an accelerator (it runs
    one stage at full speed; a second would wait for it)."""
    cpus = usable_cpus()
    if torch.device(device).type != "cpu" or cpus < 2:
        return 1, torch.get_num_threads()
    return 2, cpus // 2


def run_stages(stages: list[Stage], lanes: int, threads: int,
               finished: Callable[[str, float], None] = lambda name, seconds: None) -> dict[str, Path]:
    """Run every stage not yet done once its ``after`` stages are, ``lanes`` at a time (in this process when 1),
    each with ``threads`` threads; ``finished(name, seconds)`` is called as each ends. Returns every stage's folder
    by name. A stage that fails stops the others and raises here."""
    names = {stage.name for stage in stages}
    for stage in stages:
        if unknown := [name for name in stage.after if name not in names]:
            raise ValueError(f"stage {stage.name!r}: waits for unknown stage(s) {', '.join(unknown)}")
    results: dict[str, Path] = {}
    for stage in stages:
        if stage.done():
            print(f"[demo] {stage.output} exists; reusing it (delete it to train {stage.name} again)")
            results[stage.name] = stage.output
    stages = [stage for stage in stages if stage.name not in results]
    if lanes == 1:
        for stage in _in_order(stages, results):
            started = time.perf_counter()
            results[stage.name] = stage.work()
            finished(stage.name, time.perf_counter() - started)
        return results
    return _run_in_processes(stages, lanes, threads, results, finished)


def _in_order(stages: list[Stage], done: dict[str, Path]) -> list[Stage]:
    """The stages so that each comes after those it waits for that are not ``done`` (their listed order where that
    allows)."""
    ordered: list[Stage] = []
    waiting = list(stages)
    while waiting:
        ready = [stage for stage in waiting if all(name in done or name in {s.name for s in ordered}
                                                   for name in stage.after)]
        if not ready:
            raise ValueError(f"stages wait for each other in a circle: {', '.join(s.name for s in waiting)}")
        ordered.append(ready[0])
        waiting.remove(ready[0])
    return ordered


def _run_in_processes(stages: list[Stage], lanes: int, threads: int, results: dict[str, Path],
                      finished: Callable[[str, float], None]) -> dict[str, Path]:
    context = multiprocessing.get_context("spawn")  # fork would copy this process's thread pools and locks
    reports = context.Queue()
    running: dict[str, multiprocessing.process.BaseProcess] = {}
    waiting = _in_order(stages, results)
    try:
        while waiting or running:
            for stage in [s for s in waiting if all(name in results for name in s.after)][:lanes - len(running)]:
                process = context.Process(target=_work_in_process, name=f"tamer-{stage.name}",
                                          args=(stage, threads, reports))
                process.start()
                running[stage.name] = process
                waiting.remove(stage)
            name, outcome, seconds = _next_report(reports, running)
            running.pop(name).join()
            if isinstance(outcome, _Failure):
                raise RuntimeError(f"demo stage {name!r} failed:\n{outcome.trace}")
            results[name] = outcome
            finished(name, seconds)
    finally:
        for process in running.values():  # a failure or Ctrl-C: stop the other stages too
            process.terminate()
            process.join()
    return results


def _next_report(reports, running: dict[str, multiprocessing.process.BaseProcess]) -> tuple[str, Any, float]:
    """The next finished stage's report; raises if a stage's process dies without one (killed, out of memory)."""
    while True:
        try:
            return reports.get(timeout=1.0)
        except queue.Empty:
            for name, process in running.items():
                if not process.is_alive() and process.exitcode != 0:
                    raise RuntimeError(f"demo stage {name!r}: its process ended with exit code {process.exitcode}")


@dataclass
class _Failure:
    trace: str


class _NamedLines:
    """A text stream that writes whole lines, each led by ``prefix``, and is no terminal (so progress bars print
    lines, :mod:`tamer.progress`): two stages share the terminal and a reader must tell them apart."""

    def __init__(self, stream: TextIO, prefix: str):
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def write(self, text: str) -> int:
        lines = (self.pending + text.replace("\r", "\n")).split("\n")
        self.pending = lines.pop()
        for line in lines:
            if line.strip():
                self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _work_in_process(stage: Stage, threads: int, reports) -> None:
    torch.set_num_threads(threads)
    sys.stdout = _NamedLines(sys.__stdout__, f"[{stage.name}] ")
    sys.stderr = _NamedLines(sys.__stderr__, f"[{stage.name}] ")
    started = time.perf_counter()
    try:
        outcome = stage.work()
    except BaseException:  # noqa: BLE001 (the parent re-raises it with the stage's name)
        outcome = _Failure(traceback.format_exc())
    reports.put((stage.name, outcome, time.perf_counter() - started))
