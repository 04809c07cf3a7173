"""The demo's segmentation-conditional transformer against one reading the label maps exactly (``labels``).

    .venv/bin/python bench/demo_seg_conditions.py --demo demo-output [--steps 800] [--out runs/seg-labels]

Needs a finished ``tamer demo`` folder: its image VQGAN is the first stage of a ``transformer_tiny_labels`` run with
the demo's data and steps, and its segmentation-conditional model (a condition VQGAN's codes) is the other side.
Both sample the same held-out maps (and the 2×2 sliding-window canvas) and the same segmenter, trained as the demo
trains it, reads the samples: mIoU between each map and the segmenter's reading, as in ``results.json``.
A quality measurement: the seconds are the training run's own.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tamer.demo.run import SCENE, TOP_K, DemoPlan, held_out_scenes, mosaic, stage_overrides
from tamer.loading import load
from tamer.metrics.shape_classifier import render_training_scenes
from tamer.metrics.shape_segmenter import judge_segmentation_samples, train_shape_segmenter
from tamer.presets import preset_path
from tamer.train.transformer_run import load_run_config, train_transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `tamer demo` output folder")
    parser.add_argument("--steps", type=int, default=DemoPlan().seg_steps)
    parser.add_argument("--out", type=Path, default=Path("runs/seg-labels"))
    args = parser.parse_args()
    plan, runs = DemoPlan(), args.demo / "runs"

    if not (args.out / "model" / "config.json").is_file():
        overrides = stage_overrides(plan, "cpu", args.steps) + [f"train.batch_size={plan.transformer_batch}",
                                                         f"first_stage={runs / 'vqgan' / 'model'}"]
        started = time.perf_counter()
        train_transformer(load_run_config(preset_path("transformer_tiny_labels"), overrides), args.out)
        print(f"labels transformer: {time.perf_counter() - started:.0f} s")
    judge_scenes = render_training_scenes(32, plan.judge_images, 1, ("image", "label", "segmentation"), **SCENE)
    segmenter = train_shape_segmenter(size=32, steps=plan.judge_steps, scenes=judge_scenes, seed=1)
    canvas_segmenter = train_shape_segmenter(size=32, steps=plan.judge_steps, scenes=judge_scenes, seed=1,
                                             canvases=True)

    scenes = held_out_scenes(plan.eval_images)
    maps = {key: value[:plan.seg_maps] for key, value in scenes.items()}
    canvas = mosaic(scenes, plan.seg_maps, plan.window_canvases)
    rows = {}
    for name, path in (("condition VQGAN (the demo)", runs / "seg" / "model"), ("labels", args.out / "model")):
        model = load(path).eval()
        judged = judge_segmentation_samples(model, segmenter, maps, plan.samples_per_map, TOP_K).metrics
        window = judge_segmentation_samples(model, canvas_segmenter, canvas, 1, TOP_K, seed=3000,
                                            code_shape=(16, 16))
        rows[name] = {"miou": judged["miou"], "sliding_window_miou": window.metrics["miou"],
                      "segmenter_on_real": judged["segmenter_on_real_held_out"],
                      "segmenter_on_reconstructions": judged["segmenter_on_reconstructions"]}
        print(json.dumps({name: rows[name]}), flush=True)
    print("\n| condition | mIoU(sample, map) | sliding window mIoU |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['miou']:.3f} | {row['sliding_window_miou']:.3f} |")


if __name__ == "__main__":
    main()
