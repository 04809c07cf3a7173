"""`tamer demo` end to end with a micro plan: every stage trains, every picture and figure is written."""

import json

import pytest
from PIL import Image

from tamer.cli import main
from tamer.demo import DemoPlan, run_demo

MICRO = DemoPlan(vqgan_steps=2, seg_vqgan_steps=2, class_steps=2, seg_steps=2, judge_steps=2, judge_images=16,
                 samples_per_class=1, seg_maps=2, samples_per_map=1, window_canvases=1, eval_images=8, data_length=64,
                 val_images=8)


def test_micro_demo_writes_everything(tmp_path):
    results = run_demo(tmp_path, plan=MICRO, device="cpu")
    for name in ("reconstructions.png", "class-samples.png", "seg-samples.png", "sliding-window.png",
                 "index.html", "results.json"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sliding_window"]["area_ratio"] == 4.0 and saved["sliding_window"]["code_shape"] == [16, 16]
    assert saved["class_samples"]["samples"] == 10 and saved["class_samples"]["chance"] == 0.1
    assert 0 < saved["class_transformer"]["nll"] and saved["vqgan"]["psnr"] > 5
    for figures in (saved["seg_samples"], saved["sliding_window"]):
        assert all(0 <= figures[key] <= 1 for key in ("miou", "segmenter_on_real_held_out",
                                                       "segmenter_on_reconstructions"))
    assert saved["seg_samples"]["maps"] == 2 and saved["precision"] == "fp32"
    assert 0 <= saved["seg_samples"]["segmentation_vqgan_label_accuracy"] <= 1
    assert 0 <= saved["seg_samples"]["segmentation_vqgan_miou"] <= 1
    assert set(results["seconds"]) >= {"vqgan", "seg", "total",
                                       "classifier", "canvas-segmenter", "training"}
    page = (tmp_path / "index.html").read_text()
    assert "class-samples.png" in page and "sliding-window.png" in page and "mIoU" in page
    # pictures a person can see: 32-pixel images enlarged 4x, with room for the row names
    width, height = Image.open(tmp_path / "class-samples.png").size
    assert height == 10 * (32 + 2) * 4 + 2 * 4 and width > (32 + 2) * 4 + 2 * 4
    # A second run reuses the trained stages instead of training them again.
    weights = tmp_path / "runs" / "vqgan" / "model" / "model.safetensors"
    written = weights.stat().st_mtime_ns
    run_demo(tmp_path, plan=MICRO, device="cpu")
    assert weights.stat().st_mtime_ns == written


@pytest.mark.slow
def test_quick_demo_from_the_command_line(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").is_file()


#: a little under the figures of the shipped demo (README): a change that makes the demo worse fails the slow test
#: measured (README; AMD EPYC, two stages at a time on one core each): 26.3 dB, SSIM 0.73, usage 100%, judge 83%,
#: samples named 31% / 43%, mIoU 0.24 / 0.22 at top-k 4 over 128 maps / 16 canvases. The conditional figures spread
#: wide: over 48 maps one segmentation model read 0.22-0.28 at two sampling seeds (BENCHMARKS.md)
FLOORS = {"psnr": 25.5, "ssim": 0.68, "codebook_usage": 0.9, "judge_on_reconstructions": 0.75,
          "class_accuracy": 0.22, "class_accuracy_cfg": 0.33, "seg_miou": 0.18, "window_miou": 0.14}


@pytest.mark.slow
def test_full_demo_recipe_keeps_its_figures(tmp_path):
    """The shipped demo at full size (about 10 minutes on 2 cores): floors a little under its measured figures
    (README, "Two commands"), so a change that makes the demo worse fails here."""
    r = run_demo(tmp_path, device="cpu")
    assert r["vqgan"]["psnr"] >= FLOORS["psnr"] and r["vqgan"]["ssim"] >= FLOORS["ssim"]
    assert r["vqgan"]["codebook_usage"] >= FLOORS["codebook_usage"]
    assert r["class_samples"]["classifier_accuracy_on_reconstructions"] >= FLOORS["judge_on_reconstructions"]
    assert r["class_samples"]["accuracy_cfg"] >= FLOORS["class_accuracy_cfg"]
    assert r["class_samples"]["accuracy"] >= FLOORS["class_accuracy"]
    assert r["seg_samples"]["miou"] >= FLOORS["seg_miou"]
    assert r["sliding_window"]["miou"] >= FLOORS["window_miou"]
