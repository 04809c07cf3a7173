"""`tamer demo` end to end with a micro plan: every stage trains, every picture and figure is written."""

import json

import pytest

from tamer.cli import main
from tamer.demo import DemoPlan, run_demo

MICRO = DemoPlan(vqgan_steps=2, seg_vqgan_steps=2, class_steps=2, seg_steps=2, judge_steps=2, judge_images=16,
                 samples_per_class=1, seg_maps=2, samples_per_map=1, eval_images=8, data_length=64, val_images=8)


def test_micro_demo_writes_everything(tmp_path):
    results = run_demo(tmp_path, plan=MICRO, device="cpu")
    for name in ("reconstructions.png", "class-samples.png", "seg-samples.png", "sliding-window.png",
                 "index.html", "results.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sliding_window"]["area_ratio"] == 4.0
    assert saved["class_samples"]["samples"] == 10 and saved["class_samples"]["chance"] == 0.1
    assert 0 < saved["class_transformer"]["nll"] and saved["vqgan"]["psnr"] > 5
    assert set(results["seconds"]) >= {"VQGAN (images)", "total"}
    page = (tmp_path / "index.html").read_text()
    assert "class-samples.png" in page and "sliding-window.png" in page
    # A second run reuses the trained stages instead of training them again.
    weights = tmp_path / "runs" / "vqgan" / "model" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    run_demo(tmp_path, plan=MICRO, device="cpu")
    assert weights.stat().st_mtime_ns == written


@pytest.mark.slow
def test_quick_demo_from_the_command_line(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").is_file()
