"""Command-line overrides (``key.sub=value``) and atomic file writes."""

import os
import stat

import pytest

from tamer.checkpoints import atomic_write
from tamer.config import ConfigError, parse_overrides


def test_overrides_nest_and_parse_values_as_yaml():
    assert parse_overrides(["train.steps=100", "train.betas=[0.5, 0.9]", "data.plain=true", "name=run 1"]) == {
        "train": {"steps": 100, "betas": [0.5, 0.9]}, "data": {"plain": True}, "name": "run 1"}


def test_a_later_override_replaces_a_whole_section():
    assert parse_overrides(["val_data.size=16", "val_data=null"]) == {"val_data": None}


@pytest.mark.parametrize("pairs, message", [
    (["train.steps"], "expected key=value"),
    (["train..steps=3"], "empty part"),
    (["train.betas=[0.5, 0.9"], "train.betas: the value '\\[0.5, 0.9' is not valid YAML"),
    (["train=3", "train.steps=100"], "train.steps: train was already set"),
])
def test_bad_overrides_name_the_key(pairs, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(pairs)


def test_atomic_write_gives_files_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "weights.bin", lambda path: path.write_bytes(b"123"))
    finally:
        os.umask(mask)
    written = tmp_path / "weights.bin"
    assert written.read_bytes() == b"123"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary file left behind


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def fail(path):
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]
