"""``tamer demo``: the whole method on the built-in dataset, on a CPU, with no download.

It trains a tiny VQGAN (images) and a tiny segmentation VQGAN (label maps), then a class-conditional and a
segmentation-conditional transformer over their codes, and writes into one folder: held-out reconstructions,
class-conditional samples (one row per class), segmentation-to-image samples beside their maps, one
sliding-window sample four times the training area, the figures (PSNR, SSIM, codebook usage, held-out NLL,
the class accuracy of samples judged by a classifier trained on real images) and ``index.html`` showing it all.
Each stage is an ordinary training run in ``OUT/runs/`` that ``tamer sample`` / ``tamer eval`` can use after.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid

from .data.procedural import SHAPES, ProceduralShapes
from .devices import resolve_device
from .imageio import save_image
from .metrics.shape_classifier import judge_class_samples, train_shape_classifier
from .presets import preset_path
from .report import Section, write_report
from .sampling import SamplingSettings


@dataclass
class DemoPlan:
    """How much of everything: the full demo, or ``--quick``."""

    vqgan_steps: int = 600
    seg_vqgan_steps: int = 300
    class_steps: int = 800
    seg_steps: int = 400
    transformer_batch: int = 32
    transformer_width: int = 128  # the presets' 192 costs twice the time for little gain at this size
    classifier_steps: int = 800
    classifier_images: int = 8000
    samples_per_class: int = 8
    seg_examples: int = 6
    eval_images: int = 256
    data_length: int = 6000
    val_images: int = 256


QUICK = DemoPlan(vqgan_steps=40, seg_vqgan_steps=20, class_steps=40, seg_steps=30, classifier_steps=60,
                 classifier_images=1000, samples_per_class=4, seg_examples=3, eval_images=32, data_length=1000,
                 val_images=32)
#: scenes hold only shapes of their class (no distractors) and no fine texture, which a VQGAN trained for minutes on
#: two cores blurs away: what is left at 32×32 through 8×8 codes is the shape, its colours and the gradient behind it
SCENE = {"max_distractors": 0, "plain": True}

#: held-out items are drawn with another seed than the training items
HELD_OUT_SEED = 12345
TOP_K = 40
CFG_SCALE = 3.0


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, name: str, since: float) -> None:
        self.stages[name] = round(time.perf_counter() - since, 1)
        print(f"[demo] {name}: {self.stages[name]:.0f} s (total {time.perf_counter() - self.start:.0f} s)")


def _train_stage(kind: str, preset: str, out: Path, overrides: list[str]) -> Path:
    """Train one stage from its preset (resuming a finished or interrupted run) and return its model folder."""
    if (out / "model" / "config.json").is_file():
        print(f"[demo] {out / 'model'} exists; reusing it (delete {out} to retrain)")
        return out / "model"
    if kind == "vqgan":
        from .train.vqgan_run import load_run_config, train_vqgan as train
    else:
        from .train.transformer_run import load_run_config, train_transformer as train
    config = load_run_config(preset_path(preset), overrides)
    resume = (out / "checkpoints").is_dir()
    train(config, out, resume=resume)
    return out / "model"


def _common(plan: DemoPlan, device: str, steps: int) -> list[str]:
    """Overrides for every stage: its length, the demo's data, and validation only at the end."""
    return [f"train.steps={steps}", f"train.device={device}", f"data.length={plan.data_length}",
            f"val_data.length={plan.val_images}", f"train.val_every={steps}", f"train.checkpoint_every="
            f"{max(steps // 2, 1)}", f"train.image_every={steps}", f"train.val_batches={plan.val_images}",
            *(f"{part}.{key}={str(value).lower()}" for part in ("data", "val_data") for key, value in SCENE.items())]


def run_demo(out: str | Path = "demo-output", quick: bool = False, device: str = "auto",
             plan: DemoPlan | None = None) -> dict:
    from . import load
    from .metrics import evaluate_reconstructions
    from .metrics.likelihood import evaluate_likelihood

    plan = plan or (QUICK if quick else DemoPlan())
    out = Path(out)
    runs = out / "runs"
    watch = Stopwatch()
    dev = str(resolve_device(device))

    t = time.perf_counter()
    vqgan_dir = _train_stage("vqgan", "vqgan_tiny_cpu", runs / "vqgan", _common(plan, dev, plan.vqgan_steps))
    watch.lap("VQGAN (images)", t)
    t = time.perf_counter()
    seg_vqgan_dir = _train_stage("vqgan", "vqgan_tiny_seg", runs / "vqgan-seg",
                                 _common(plan, dev, plan.seg_vqgan_steps))
    watch.lap("VQGAN (segmentation maps)", t)
    t = time.perf_counter()
    # No dropout: a few thousand steps see each scene a handful of times, and dropout only slowed learning (held-out
    # NLL 2.73 without vs 2.86 with 0.1 after 2400 steps of the class model).
    gpt = [f"train.batch_size={plan.transformer_batch}", f"model.gpt.n_embd={plan.transformer_width}",
           *(f"model.gpt.{name}=0" for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"))]
    class_dir = _train_stage("transformer", "transformer_tiny_class", runs / "class",
                             _common(plan, dev, plan.class_steps) + gpt + [f"first_stage={vqgan_dir}"])
    watch.lap("transformer (class-conditional)", t)
    t = time.perf_counter()
    seg_dir = _train_stage("transformer", "transformer_tiny_seg", runs / "seg",
                           _common(plan, dev, plan.seg_steps) + gpt + [f"first_stage={vqgan_dir}",
                                                                       f"cond_stage={seg_vqgan_dir}"])
    watch.lap("transformer (segmentation-conditional)", t)

    t = time.perf_counter()
    classifier = train_shape_classifier(size=32, steps=plan.classifier_steps, train_images=plan.classifier_images,
                                        seed=1, **SCENE)
    watch.lap("shape classifier (the judge)", t)

    vqgan, class_model, seg_model = (load(p, map_location=dev).eval() for p in (vqgan_dir, class_dir, seg_dir))
    held_out = ProceduralShapes(size=32, length=plan.eval_images, seed=HELD_OUT_SEED, **SCENE)
    results: dict = {"plan": asdict(plan), "device": dev}

    t = time.perf_counter()
    recon = evaluate_reconstructions(vqgan, held_out, fid=False, lpips=False)
    keep = ("psnr", "ssim", "codebook_usage", "perplexity")
    results["vqgan"] = {k: recon.metrics[k] for k in keep if k in recon.metrics}
    results["vqgan"]["num_codes"] = vqgan.vocab_size
    _save_reconstructions(vqgan, held_out, out / "reconstructions.png", dev)
    for name, model in (("class", class_model), ("seg", seg_model)):
        nll = evaluate_likelihood(model, held_out, batch_size=32)
        results[f"{name}_transformer"] = {k: nll.metrics[k] for k in ("nll", "bits_per_token", "bits_per_dim")}
        results[f"{name}_transformer"]["uniform_nll"] = float(torch.log(torch.tensor(float(model.image_vocab_size))))
    watch.lap("held-out evaluation", t)

    t = time.perf_counter()
    results["class_samples"] = _class_samples(class_model, classifier, plan, out, held_out)
    results["seg_samples"] = _segmentation_samples(seg_model, plan, out)
    results["sliding_window"] = _sliding_window_sample(seg_model, out)
    watch.lap("sampling", t)

    results["seconds"] = {**watch.stages, "total": round(time.perf_counter() - watch.start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _write_page(out, results, quick)
    _print_summary(results, out)
    return results


@torch.no_grad()
def _save_reconstructions(vqgan, dataset, path: Path, device: str, count: int = 8) -> None:
    images = torch.stack([dataset[i]["image"] for i in range(count)]).to(device)
    reconstructions = vqgan(images).reconstruction.clamp(-1, 1)
    save_image(make_grid(torch.cat([images, reconstructions]).cpu(), nrow=count, padding=2, pad_value=1.0), path)


def _class_samples(model, classifier, plan: DemoPlan, out: Path, held_out) -> dict:
    """Samples of every class, plain and guided (same seeds), named by the judge (see ``judge_class_samples``)."""
    guided = model.conditioning.classifier_free
    judged = judge_class_samples(model, classifier, held_out, plan.samples_per_class,
                                 (1.0, CFG_SCALE) if guided else (1.0,), TOP_K)
    for scale, name in ((1.0, "class-samples.png"), (CFG_SCALE, "class-samples-cfg.png")):
        if scale in judged.samples:
            save_image(judged.grid(scale), out / name)
    m = judged.metrics
    return {"samples": len(judged.samples[1.0]), "accuracy": m["accuracy"]["1"],
            "accuracy_cfg": m["accuracy"].get(f"{CFG_SCALE:g}"), "cfg_scale": CFG_SCALE, "chance": m["chance"],
            "classifier_accuracy_on_real_held_out": m["classifier_on_real_held_out"],
            "classifier_accuracy_on_reconstructions": m["classifier_on_reconstructions"], "top_k": TOP_K}


@torch.no_grad()
def _segmentation_samples(model, plan: DemoPlan, out: Path) -> dict:
    data = ProceduralShapes(size=32, length=plan.seg_examples, seed=HELD_OUT_SEED + 1, **SCENE)
    items = [data[i] for i in range(plan.seg_examples)]
    maps = torch.stack([item["segmentation"] for item in items])
    previews = model.cond_stage_model.decode(model.condition_tokens(maps, len(maps))).float().cpu()
    per_map = 3
    rows = []
    for i, item in enumerate(items):
        samples = model.sample(maps[i:i + 1].expand(per_map, -1, -1), per_map, SamplingSettings(top_k=TOP_K),
                               seed=2000 + i * per_map).float().cpu()
        rows.append(torch.cat([previews[i:i + 1], item["image"][None], samples]))
    save_image(make_grid(torch.cat(rows), nrow=2 + per_map, padding=2, pad_value=1.0), out / "seg-samples.png")
    return {"maps": len(items), "samples_per_map": per_map, "top_k": TOP_K}


@torch.no_grad()
def _sliding_window_sample(model, out: Path) -> dict:
    """A 64×64 scene's map -> a 64×64 image: 16×16 codes from the 8×8-code window, four times the area."""
    factor = model.config.first_stage.downsample_factor
    item = ProceduralShapes(size=64, length=1, seed=HELD_OUT_SEED + 2, **SCENE)[0]
    seg = item["segmentation"][None]
    code_shape = (64 // factor, 64 // factor)
    started = time.perf_counter()
    image = model.sample(seg, 1, SamplingSettings(top_k=TOP_K), seed=3000, code_shape=code_shape).float().cpu()
    seconds = time.perf_counter() - started
    preview = model.cond_stage_model.decode(model.condition_tokens(seg, 1)).float().cpu()
    save_image(make_grid(torch.cat([preview, item["image"][None], image]), nrow=3, padding=2, pad_value=1.0),
               out / "sliding-window.png")
    h, w = model.config.code_shape
    return {"code_shape": list(code_shape), "window": [h, w],
            "area_ratio": code_shape[0] * code_shape[1] / (h * w), "seconds": round(seconds, 1)}


def _write_page(out: Path, results: dict, quick: bool) -> None:
    v, c, s = results["vqgan"], results["class_transformer"], results["seg_transformer"]
    samples, window = results["class_samples"], results["sliding_window"]
    cfg = f"{samples['cfg_scale']:g}"
    sections = [
        Section("Stage 1: the VQGAN tokenizer",
                "Held-out scenes (top) and their reconstructions from 8×8 codes (bottom).",
                [("reconstructions.png", "held-out images and reconstructions")],
                {"PSNR (dB)": v["psnr"], "SSIM": v.get("ssim", "n/a"), "codebook usage": v["codebook_usage"],
                 "perplexity": v["perplexity"], "codes": v["num_codes"]}),
        Section("Stage 2: class-conditional samples",
                "One row per class: " + ", ".join(SHAPES) + f". Top-k {samples['top_k']}. A classifier trained on "
                "real images names the class of each sample; its accuracy on the VQGAN's reconstructions of real "
                "scenes is the most a transformer over these codes can reach.",
                [("class-samples.png", "class-conditional samples")] + (
                    [("class-samples-cfg.png", f"the same seeds with classifier-free guidance, scale {cfg}")]
                    if samples["accuracy_cfg"] is not None else []),
                {"class accuracy of samples": samples["accuracy"],
                 f"with guidance (scale {cfg})": samples["accuracy_cfg"] if samples["accuracy_cfg"] is not None
                 else "n/a", "chance": samples["chance"],
                 "classifier on real held-out images": samples["classifier_accuracy_on_real_held_out"],
                 "classifier on their reconstructions": samples["classifier_accuracy_on_reconstructions"],
                 "held-out NLL (nats/token)": c["nll"], "uniform NLL": c["uniform_nll"],
                 "bits/dim": c["bits_per_dim"]}),
        Section("Stage 2: segmentation to image",
                "Each row: the map as the condition VQGAN reconstructs it, the real scene, then samples.",
                [("seg-samples.png", "segmentation-conditional samples")],
                {"held-out NLL (nats/token)": s["nll"], "uniform NLL": s["uniform_nll"], "bits/dim": s["bits_per_dim"]}),
        Section("Sliding-window sampling",
                f"A {window['code_shape'][0]}×{window['code_shape'][1]}-code image from a model trained on "
                f"{window['window'][0]}×{window['window'][1]} codes ({window['area_ratio']:.0f}× the area): map, "
                "real scene, sample.", [("sliding-window.png", "sliding-window sample")],
                {"seconds": window["seconds"]}),
        Section("Time", "Wall-clock seconds per stage on this machine.", [], results["seconds"]),
    ]
    lead = ("Everything here was trained on this machine from the built-in procedural dataset, with no download"
            + (" (--quick: a minute of training, so expect noise)." if quick else "."))
    write_report(out / "index.html", "tamer demo", lead, sections)


def _print_summary(results: dict, out: Path) -> None:
    v, c, s = results["vqgan"], results["class_transformer"], results["seg_transformer"]
    samples = results["class_samples"]
    print(f"\nVQGAN: held-out PSNR {v['psnr']:.2f} dB, SSIM {v.get('ssim', float('nan')):.3f}, codebook usage "
          f"{v['codebook_usage']:.0%} (perplexity {v['perplexity']:.0f} of {v['num_codes']})")
    print(f"class-conditional: held-out NLL {c['nll']:.3f} nats/token (uniform {c['uniform_nll']:.3f}), "
          f"samples classified correctly {samples['accuracy']:.0%}"
          + (f", {samples['accuracy_cfg']:.0%} with guidance {samples['cfg_scale']:g}"
             if samples["accuracy_cfg"] is not None else "")
          + f" (chance {samples['chance']:.0%}; the classifier gets "
          f"{samples['classifier_accuracy_on_real_held_out']:.0%} of real images and "
          f"{samples['classifier_accuracy_on_reconstructions']:.0%} of their reconstructions)")
    print(f"segmentation-conditional: held-out NLL {s['nll']:.3f} nats/token (uniform {s['uniform_nll']:.3f})")
    print(f"total {results['seconds']['total'] / 60:.1f} min; open {out / 'index.html'}")
