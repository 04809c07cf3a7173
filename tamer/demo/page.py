"""The demo's pictures (labelled, enlarged), its page and the summary it prints."""

from __future__ import annotations

from pathlib import Path

import torch

from tamer.report import Section, colour_labels, labelled_grid, write_report

#: samples per class row in the pictures (all are judged): more would shrink each 4x image on the page
SHOWN_PER_CLASS = 8
#: maps (rows) in the segmentation picture and canvases in the sliding-window one (all are judged): 16 rows of
#: 32-pixel images at 4x are already a long page, and each canvas is twice as tall
SHOWN_MAPS, SHOWN_CANVASES = 16, 8


def write_page(out: Path, results: dict, quick: bool, real: torch.Tensor, reconstructions: torch.Tensor,
               class_judgement, seg_model, seg_judgement, window_judgement) -> None:
    """Save every picture into ``out`` and write ``index.html`` showing each beside its figures."""
    v, c, s = results["vqgan"], results["class_transformer"], results["seg_transformer"]
    samples, seg, window = results["class_samples"], results["seg_samples"], results["sliding_window"]
    n = len(real)
    labelled_grid(torch.cat([real, reconstructions]), n, ["real", "reconstructed"]).save(out / "reconstructions.png")
    per_class = class_judgement.metrics["samples_per_class"]
    shown = min(per_class, SHOWN_PER_CLASS)
    cfg = f"{samples['cfg_scale']:g}"
    per_class_figures = class_judgement.metrics["per_class"]
    for scale, name in ((1.0, "class-samples.png"), (samples["cfg_scale"], "class-samples-cfg.png")):
        rows = class_judgement.samples[scale].unflatten(0, (-1, per_class))[:, :shown].flatten(0, 1)
        named = [f"{shape} {round(figures['accuracy'][f'{scale:g}'] * per_class)}/{per_class}"
                 for shape, figures in per_class_figures.items()]  # each row says how many of its samples are named
        labelled_grid(rows, shown, named).save(out / name)
    _map_rows(seg_model, seg_judgement, SHOWN_MAPS, out / "seg-samples.png")
    _map_rows(seg_model, window_judgement, SHOWN_CANVASES, out / "sliding-window.png")

    sections = [
        Section("Stage 1: the VQGAN tokenizer",
                "Held-out scenes (top row) and their reconstructions from 8×8 codes (bottom row).",
                [("reconstructions.png", "held-out images and their reconstructions")],
                {"PSNR (dB)": v["psnr"], "SSIM": v.get("ssim", "n/a"), "codebook usage": v["codebook_usage"],
                 "perplexity": v["perplexity"], "codes": v["num_codes"],
                 "classifier names the reconstructions": samples["classifier_accuracy_on_reconstructions"],
                 "… and the real scenes": samples["classifier_accuracy_on_real_held_out"]},
                "Good: every shape keeps its outline and colour; PSNR of 26 dB or more, SSIM 0.85 or more, and the "
                "classifier names the reconstructions about as often as the real scenes."),
        Section("Stage 2: class-conditional samples",
                f"One row per class, top-k {samples['top_k']}: plain sampling, and the same seeds with "
                f"classifier-free guidance (scale {cfg}). A classifier trained on real scenes names each sample's "
                "class; its accuracy on the VQGAN's reconstructions is the most a transformer over these codes can "
                f"reach. Each row shows {shown} of the {per_class} samples judged, and how many of them the "
                "classifier named right.",
                [("class-samples.png", "class-conditional samples"),
                 ("class-samples-cfg.png", f"with classifier-free guidance, scale {cfg}")],
                {"samples named correctly": samples["accuracy"], f"with guidance {cfg}": samples["accuracy_cfg"],
                 "chance": samples["chance"],
                 "ceiling (reconstructions)": samples["classifier_accuracy_on_reconstructions"],
                 "ceiling per class": ", ".join(f"{shape} {_percent(figures['on_reconstructions'])}"
                                                for shape, figures in per_class_figures.items()),
                 "held-out NLL (nats/token)": c["nll"], "uniform NLL": c["uniform_nll"],
                 "bits/dim": c["bits_per_dim"]},
                "Good: each row shows its own shape; far above chance, near the ceiling with guidance."),
        Section("Stage 2: segmentation to image",
                "Each row: the label map (as given, then as the condition VQGAN gives it back), the real scene, then "
                f"samples drawn from the map (top-k {seg['top_k']}); {min(seg['maps'], SHOWN_MAPS)} of the "
                f"{seg['maps']} maps judged. A segmenter trained on real scenes reads every sample; the figure is the "
                "mIoU between its reading and the map.",
                [("seg-samples.png", "segmentation-conditional samples")],
                {"mIoU(samples, maps)": seg["miou"], "segmenter on real scenes": seg["segmenter_on_real_held_out"],
                 "segmenter on reconstructions": seg["segmenter_on_reconstructions"],
                 "condition VQGAN keeps (pixel accuracy)": seg["segmentation_vqgan_label_accuracy"],
                 "condition VQGAN keeps (mIoU)": seg["segmentation_vqgan_miou"],
                 "held-out NLL (nats/token)": s["nll"], "uniform NLL": s["uniform_nll"], "maps": seg["maps"]},
                "Good: every sample puts the map's shapes where the map has them; mIoU of 0.5 or more."),
        Section("Sliding-window sampling",
                f"A {window['code_shape'][0]}×{window['code_shape'][1]}-code image from a model trained on "
                f"{window['window'][0]}×{window['window'][1]} codes ({window['area_ratio']:.0f}× the area), drawn "
                "from four held-out maps side by side: the maps, the real scenes, the sample; "
                f"{min(window['maps'], SHOWN_CANVASES)} of the {window['maps']} canvases judged. Its judge is a "
                "segmenter trained on such canvases of real scenes.",
                [("sliding-window.png", "sliding-window sample")],
                {"mIoU(sample, map)": window["miou"], "canvas segmenter on the real canvases": window[
                    "segmenter_on_real_held_out"], "seconds": window["seconds"]},
                "Good: the shapes of all four quarters appear where the map has them; mIoU of 0.4 or more."),
        Section("Time", f"Wall-clock seconds per stage on this machine ({results['device']}, "
                f"{results['precision']}).", [], results["seconds"]),
    ]
    lead = ("Everything here was trained on this machine from the built-in procedural dataset, with no download"
            + (" (--quick: a minute of training, so expect noise)." if quick else ".")
            + f" To sample from these models in a web page: {app_command(out)}")
    write_report(out / "index.html", "tamer demo", lead, sections)


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


@torch.no_grad()
def _map_rows(model, judgement, shown: int, path: Path) -> None:
    """A row for each of the first ``shown`` maps: the map, the map as the condition VQGAN gives it back, the real
    scene, then the samples."""
    maps, per_map = judgement.maps[:shown], judgement.metrics["samples_per_map"]
    seen = model.cond_stage_model.decode_labels(model.condition_tokens(maps, len(maps))).cpu()
    rows = []
    for i in range(len(maps)):
        rows += [colour_labels(maps[i:i + 1]), colour_labels(seen[i:i + 1]), judgement.images[i:i + 1],
                 judgement.samples[i * per_map:(i + 1) * per_map]]
    columns = ["map", "as coded", "real"] + [f"sample {k + 1}" for k in range(per_map)]
    labelled_grid(torch.cat(rows), 3 + per_map, column_labels=columns).save(path)


def print_summary(results: dict, out: Path) -> None:
    v, c, s = results["vqgan"], results["class_transformer"], results["seg_transformer"]
    samples, seg, window = results["class_samples"], results["seg_samples"], results["sliding_window"]
    print(f"\nVQGAN: held-out PSNR {v['psnr']:.2f} dB, SSIM {v.get('ssim', float('nan')):.3f}, codebook usage "
          f"{v['codebook_usage']:.0%} (perplexity {v['perplexity']:.0f} of {v['num_codes']}); the classifier names "
          f"{samples['classifier_accuracy_on_reconstructions']:.0%} of the reconstructions "
          f"({samples['classifier_accuracy_on_real_held_out']:.0%} of the real scenes)")
    print(f"class-conditional: held-out NLL {c['nll']:.3f} nats/token (uniform {c['uniform_nll']:.3f}), "
          f"samples named correctly {samples['accuracy']:.0%}, {samples['accuracy_cfg']:.0%} with guidance "
          f"{samples['cfg_scale']:g} (chance {samples['chance']:.0%})")
    print(f"segmentation-conditional: held-out NLL {s['nll']:.3f} nats/token (uniform {s['uniform_nll']:.3f}), "
          f"mIoU(samples, maps) {seg['miou']:.2f} (segmenter on real scenes {seg['segmenter_on_real_held_out']:.2f},"
          f" on reconstructions {seg['segmenter_on_reconstructions']:.2f}); sliding window at "
          f"{window['area_ratio']:.0f}x the area: mIoU {window['miou']:.2f} (canvas segmenter on the real canvases "
          f"{window['segmenter_on_real_held_out']:.2f})")
    print(f"total {results['seconds']['total'] / 60:.1f} min ({results['precision']}); open {out / 'index.html'}")
    print(f"sample from these models in a web page (pip install 'tamer-vq[app]'): {app_command(out)}")


def app_command(out: Path) -> str:
    """The ``tamer app`` command that opens the demo's models."""
    return "tamer app " + " ".join(f"--model {out / 'runs' / name / 'model'}" for name in ("class", "seg", "vqgan"))
