"""``tamer demo``: the whole method on the built-in dataset, on a CPU, with no download.

It trains a tiny VQGAN (images) and a tiny segmentation VQGAN (label maps), then a class-conditional and a
segmentation-conditional transformer over their codes, and judges trained on real scenes: a classifier, a segmenter
and a segmenter of four-scene canvases (for the sliding-window sample).
It writes into one folder: held-out reconstructions, class-conditional samples (a row per class), segmentation-to-
image samples beside their maps, a sliding-window sample four times the training area, the figures (PSNR, SSIM,
codebook usage, held-out NLL, how often the classifier names a sample's class, the mIoU between a map and a
segmenter's reading of its samples) and ``index.html`` showing it all. Each stage is an ordinary training run in
``OUT/runs/`` that ``tamer sample`` / ``tamer eval`` can use after.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from tamer.data.procedural import ProceduralShapes
from tamer.demo.page import print_summary, write_page
from tamer.demo.stages import Stage, lanes_for, run_stages
from tamer.devices import resolve_device
from tamer.loading import load
from tamer.metrics import evaluate_reconstructions
from tamer.metrics.likelihood import evaluate_likelihood
from tamer.metrics.shape_classifier import judge_class_samples, render_training_scenes, tile_2x2, train_shape_classifier
from tamer.metrics.shape_segmenter import judge_segmentation_samples, mean_iou, train_shape_segmenter
from tamer.presets import preset_path


@dataclass
class DemoPlan:
    """How much of everything: the full demo, or ``--quick``."""

    # The tokenizer: vqgan_tiny_cpu with more codes and twice the updates at half the batch (the same images seen).
    # 600 steps at batch 16 and 256 codes of 16 dims gave 24.8 dB; this, with gradients clipped at norm 1, 26.0 and
    # 26.0 at seeds 0 and 2 for about 25% more time (BENCHMARKS.md, "The demo's tiny VQGAN").
    vqgan_steps: int = 1200
    vqgan_batch: int = 8
    vqgan_codes: int = 512
    vqgan_code_dim: int = 32
    seg_vqgan_steps: int = 300
    class_steps: int = 2400  # the class shows late: 14.5% of samples named at 800 steps of 4 layers, 29.5% here
    seg_steps: int = 800
    transformer_batch: int = 32
    judge_steps: int = 800  # each judge (classifier, segmenter); 400 steps on 3000 scenes left the classifier at 67%
    judge_images: int = 8000  # real scenes both judges learn from
    samples_per_class: int = 16  # 160 samples: a standard error of about 4 points on the share named (80: 5.5)
    # Held-out maps the segmentation-conditional samples are drawn from: over 48 maps one model read 0.22-0.28 at two
    # sampling seeds and 0.26-0.29 at another training seed; 128 maps (about 10 s of sampling) narrow that spread.
    seg_maps: int = 128
    samples_per_map: int = 2
    window_canvases: int = 16  # sliding-window samples, each from four held-out maps side by side (2.3 s for 8)
    eval_images: int = 256
    data_length: int = 6000
    val_images: int = 256

    def __post_init__(self):
        if self.eval_images < self.seg_maps + 4 * self.window_canvases:
            raise ValueError(f"eval_images: {self.eval_images} held-out scenes do not hold the {self.seg_maps} "
                             f"maps for the segmentation samples and the four of each of the "
                             f"{self.window_canvases} sliding-window canvases")


QUICK = DemoPlan(vqgan_steps=40, seg_vqgan_steps=20, class_steps=40, seg_steps=30, judge_steps=60, judge_images=1000,
                 samples_per_class=4, seg_maps=4, window_canvases=4, eval_images=32, data_length=1000, val_images=32)
#: scenes hold one large shape of their class near the centre (no distractors) and no fine texture, which a VQGAN
#: trained for minutes on two cores blurs away: what is left at 32×32 through 8×8 codes is the shape, its colours and
#: the gradient behind it. Framed so, the judge names 75% of reconstructions (57% with the dataset's 1-2 smaller shapes)
SCENE = {"max_distractors": 0, "plain": True, "object_centric": True}

#: held-out items are drawn with another seed than the training items
HELD_OUT_SEED = 12345
TOP_K = 40
#: the segmentation-conditional samples keep the 4 likeliest codes: over the shipped demo's model, 48 maps × 2 samples
#: at four sampling seeds, mIoU 0.30-0.35 against 0.25-0.30 at top-k 40, every seed higher (BENCHMARKS.md)
SEG_TOP_K = 4
CFG_SCALE = 5.0  # class-proof named 59.5% at 5, 65% at 3; the demo's model 43% and 46% (within its noise)


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str, since: float) -> None:
        self.record(name, time.perf_counter() - since)

    def record(self, name: str, seconds: float) -> None:
        self.stages[name] = round(seconds, 1)
        print(f"[demo] {name}: {seconds:.0f} s (total {time.perf_counter() - self.start:.0f} s)")


def _train_stage(kind: str, preset: str, out: Path, overrides: list[str]) -> Path:
    """Train one stage from its preset (resuming an interrupted run) and return its model folder."""
    if kind == "vqgan":
        from tamer.train.vqgan_run import load_run_config
        from tamer.train.vqgan_run import train_vqgan as train
    else:
        from tamer.train.transformer_run import load_run_config
        from tamer.train.transformer_run import train_transformer as train
    config = load_run_config(preset_path(preset), overrides)
    resume = (out / "checkpoints").is_dir()
    train(config, out, resume=resume)
    return out / "model"


def _train_judge(kind: str, folder: Path, plan: DemoPlan) -> Path:
    """Train one judge on real scenes and return its folder. All three learn from the same scenes, drawn with a
    seed of their own (neither training nor held out)."""
    scenes = render_training_scenes(32, plan.judge_images, 1, ("image", "label", "segmentation"), **SCENE)
    if kind == "classifier":
        judge = train_shape_classifier(size=32, steps=plan.judge_steps, scenes=scenes, seed=1)
    else:  # the sliding-window sample's judge learns from canvases of four scenes: one of scenes reads them at 0.2
        judge = train_shape_segmenter(size=32, steps=plan.judge_steps, scenes=scenes, seed=1,
                                      canvases=kind == "canvas-segmenter")
    return judge.save(folder)


def stage_overrides(plan: DemoPlan, device: str, steps: int) -> list[str]:
    """Overrides for every stage: its length, the demo's data, validation only at the end, and fp32 (the published
    figures are fp32, whatever train.precision's auto would pick here; at these sizes bf16 speeds the VQGANs 1.3×
    and slows the transformers, BENCHMARKS.md)."""
    return [f"train.steps={steps}", f"train.device={device}", "train.precision=fp32",
            f"data.length={plan.data_length}",
            f"val_data.length={plan.val_images}", f"train.val_every={steps}", f"train.checkpoint_every="
            f"{max(steps // 2, 1)}", f"train.image_every={steps}", f"train.val_batches={plan.val_images}",
            *(f"{part}.{key}={str(value).lower()}" for part in ("data", "val_data") for key, value in SCENE.items())]


def held_out_scenes(count: int, size: int = 32, seed: int = HELD_OUT_SEED) -> dict[str, torch.Tensor]:
    """``count`` held-out demo scenes (images, labels, segmentation maps), rendered once."""
    return render_training_scenes(size, count, seed, ("image", "label", "segmentation"), progress=False, **SCENE)


def mosaic(scenes: dict[str, torch.Tensor], first: int = 0, count: int = 1) -> dict[str, torch.Tensor]:
    """``count`` canvases of four scenes side by side, 2×2, from scene ``first`` on: four times the area with
    shapes at the training scale (the sliding window widens the view; it does not zoom in)."""
    return {key: tile_2x2(scenes[key][first:first + 4 * count]) for key in ("image", "segmentation")}


def run_demo(out: str | Path = "demo-output", quick: bool = False, device: str = "auto",
             plan: DemoPlan | None = None) -> dict:
    plan = plan or (QUICK if quick else DemoPlan())
    out = Path(out)
    runs = out / "runs"
    watch = Stopwatch()
    dev = str(resolve_device(device))

    tokenizer = [f"train.batch_size={plan.vqgan_batch}", f"model.quantizer.num_codes={plan.vqgan_codes}",
                 f"model.quantizer.embed_dim={plan.vqgan_code_dim}",
                 "train.max_grad_norm=1.0",  # seed 2 without it: 25.5 dB (22.0 dB at 256 codes), with it 26.0
                 f"loss.disc_start={plan.vqgan_steps + 1}", "loss.disc_warmup_steps=0"]  # no GAN in a run this short
    gpt = [f"train.batch_size={plan.transformer_batch}", f"first_stage={runs / 'vqgan' / 'model'}"]

    def trained(name: str, kind: str, preset: str, steps: int, extra: list[str], after=()) -> Stage:
        work = partial(_train_stage, kind, preset, runs / name, stage_overrides(plan, dev, steps) + extra)
        return Stage(name, work, runs / name / "model", after)

    def judge(kind: str) -> Stage:
        return Stage(kind, partial(_train_judge, kind, runs / "judges" / kind, plan), runs / "judges" / kind)

    # A free lane takes the first stage in this list that can start: the transformers as soon as their codes exist
    # (they are the longest), the judges in the gaps (on two cores one lane trains the condition VQGAN and two
    # judges, about 250 s, while the other trains the 180-s VQGAN).
    stages = [
        trained("vqgan", "vqgan", "vqgan_tiny_cpu", plan.vqgan_steps, tokenizer),
        trained("vqgan-seg", "vqgan", "vqgan_tiny_seg", plan.seg_vqgan_steps, []),
        trained("class", "transformer", "transformer_tiny_class", plan.class_steps, gpt, after=("vqgan",)),
        trained("seg", "transformer", "transformer_tiny_seg", plan.seg_steps,
                gpt + [f"cond_stage={runs / 'vqgan-seg' / 'model'}"], after=("vqgan", "vqgan-seg")),
        judge("classifier"),
        judge("segmenter"),
        judge("canvas-segmenter"),
    ]
    lanes, threads = lanes_for(dev)
    print(f"[demo] training {len(stages)} stages, {lanes} at a time, {threads} thread(s) each")
    folders = run_stages(stages, lanes, threads, watch.record)
    watch.lap("training", watch.start)

    vqgan, class_model, seg_model = (load(folders[name], map_location=dev).eval() for name in ("vqgan", "class", "seg"))
    classifier, segmenter, canvas_segmenter = (load(folders[name]).eval()
                                               for name in ("classifier", "segmenter", "canvas-segmenter"))
    held_out = ProceduralShapes(size=32, length=plan.eval_images, seed=HELD_OUT_SEED, **SCENE)
    results: dict = {"plan": asdict(plan), "device": dev, "precision": "fp32"}

    t = time.perf_counter()
    recon = evaluate_reconstructions(vqgan, held_out, fid=False, lpips=False)
    keep = ("psnr", "ssim", "codebook_usage", "perplexity")
    results["vqgan"] = {k: recon.metrics[k] for k in keep if k in recon.metrics}
    results["vqgan"]["num_codes"] = vqgan.vocab_size
    scenes = held_out_scenes(plan.eval_images)
    with torch.no_grad():
        reconstructions = vqgan(scenes["image"][:8].to(dev)).reconstruction.clamp(-1, 1).cpu()
    for name, model in (("class", class_model), ("seg", seg_model)):
        nll = evaluate_likelihood(model, held_out, batch_size=32)
        results[f"{name}_transformer"] = {k: nll.metrics[k] for k in ("nll", "bits_per_token", "bits_per_dim")}
        results[f"{name}_transformer"]["uniform_nll"] = float(torch.log(torch.tensor(float(model.image_vocab_size))))
    watch.lap("held-out evaluation", t)

    t = time.perf_counter()
    class_judgement = judge_class_samples(class_model, classifier, held_out, plan.samples_per_class,
                                          (1.0, CFG_SCALE), TOP_K)
    results["class_samples"] = _class_figures(class_judgement)
    maps = {key: value[:plan.seg_maps] for key, value in scenes.items()}
    seg_judgement = judge_segmentation_samples(seg_model, segmenter, maps, plan.samples_per_map, SEG_TOP_K)
    results["seg_samples"] = seg_judgement.metrics
    results["seg_samples"].update(_condition_fidelity(seg_model, maps["segmentation"], segmenter.config.num_labels))
    started = time.perf_counter()
    factor = seg_model.config.first_stage.downsample_factor
    canvas = mosaic(scenes, plan.seg_maps, plan.window_canvases)  # maps not among those above
    window_judgement = judge_segmentation_samples(seg_model, canvas_segmenter, canvas, 1, SEG_TOP_K, seed=3000,
                                                  code_shape=(64 // factor, 64 // factor))
    h, w = seg_model.config.code_shape
    results["sliding_window"] = {**window_judgement.metrics, "code_shape": [64 // factor, 64 // factor],
                                 "window": [h, w], "area_ratio": (64 // factor) ** 2 / (h * w),
                                 "seconds": round(time.perf_counter() - started, 1)}
    watch.lap("sampling and judging", t)

    results["seconds"] = {**watch.stages, "total": round(time.perf_counter() - watch.start, 1)}
    write_page(out, results, quick, scenes["image"][:8], reconstructions[:8], class_judgement, seg_model,
               seg_judgement, window_judgement)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, out)
    return results


def _class_figures(judged) -> dict:
    m = judged.metrics
    return {"samples": len(judged.samples[1.0]), "accuracy": m["accuracy"]["1"],
            "accuracy_cfg": m["accuracy"][f"{CFG_SCALE:g}"], "cfg_scale": CFG_SCALE, "chance": m["chance"],
            "classifier_accuracy_on_real_held_out": m["classifier_on_real_held_out"],
            "classifier_accuracy_on_reconstructions": m["classifier_on_reconstructions"], "top_k": TOP_K,
            "per_class": m["per_class"]}


@torch.no_grad()
def _condition_fidelity(model, maps: torch.Tensor, num_labels: int) -> dict:
    """How much of each map the condition VQGAN gives back (what the transformer is actually shown): the share of
    pixels and the mIoU, the ceiling a perfect sampler would reach if the judge were perfect."""
    seen = model.cond_stage_model.decode_labels(model.condition_tokens(maps, len(maps))).cpu()
    return {"segmentation_vqgan_label_accuracy": (seen == maps).float().mean().item(),
            "segmentation_vqgan_miou": mean_iou(seen, maps, num_labels)}
