"""The demo's stage graph: order, reuse of finished stages, failures that stop the rest, named output lines."""

import io
import multiprocessing
import time
from functools import partial
from pathlib import Path

import pytest

from tamer.demo.stages import Stage, _NamedLines, run_stages


def _save(folder: Path, needs: tuple[Path, ...] = (), seconds: float = 0.0) -> Path:
    """A stand-in for training: check what it needs exists, wait, then save a 'model'."""
    for path in needs:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not there yet")
    time.sleep(seconds)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _fail(message: str) -> Path:
    raise ValueError(message)


def _stage(tmp_path: Path, name: str, after: tuple[str, ...] = (), seconds: float = 0.0) -> Stage:
    needs = tuple(tmp_path / other for other in after)
    return Stage(name, partial(_save, tmp_path / name, needs, seconds), tmp_path / name, after)


@pytest.mark.parametrize("lanes", [1, 2])
def test_each_stage_runs_once_after_the_stages_it_waits_for(tmp_path, lanes):
    finished = []
    # listed before what it waits for: it still runs after it
    stages = [_stage(tmp_path, "late", after=("early", "side")), _stage(tmp_path, "early", seconds=0.5),
              _stage(tmp_path, "side")]
    folders = run_stages(stages, lanes, 1, lambda name, seconds: finished.append(name))
    assert folders == {name: tmp_path / name for name in ("late", "early", "side")}
    assert finished[-1] == "late" and sorted(finished) == ["early", "late", "side"]


def test_a_finished_stage_is_reused_not_run_again(tmp_path):
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.json").write_text("{}")
    stages = [Stage("early", partial(_fail, "must not run"), tmp_path / "early"), _stage(tmp_path, "late", ("early",))]
    assert run_stages(stages, 1, 1) == {"early": tmp_path / "early", "late": tmp_path / "late"}


def test_a_failing_stage_names_itself_and_stops_the_others(tmp_path):
    stages = [_stage(tmp_path, "slow", seconds=60), Stage("broken", partial(_fail, "no data"), tmp_path / "broken")]
    with pytest.raises(RuntimeError, match=r"stage 'broken' failed(.|\n)*ValueError: no data"):
        run_stages(stages, 2, 1)
    assert not [process for process in multiprocessing.active_children() if process.name == "tamer-slow"]
    assert not (tmp_path / "slow").exists()  # stopped, not left to finish


def test_stages_that_wait_for_a_missing_stage_or_for_each_other_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'late': waits for unknown stage"):
        run_stages([_stage(tmp_path, "late", after=("nowhere",))], 1, 1)
    with pytest.raises(ValueError, match="in a circle"):
        run_stages([_stage(tmp_path, "a", after=("b",)), _stage(tmp_path, "b", after=("a",))], 1, 1)


def test_output_of_a_stage_comes_as_whole_lines_with_its_name():
    sink = io.StringIO()
    stream = _NamedLines(sink, "[vqgan] ")
    stream.write("train 10%\rtrain 20%")
    stream.write("\nsaved\n\n")
    assert sink.getvalue() == "[vqgan] train 10%\n[vqgan] train 20%\n[vqgan] saved\n" and not stream.isatty()
