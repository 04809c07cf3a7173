"""Training curves as pictures: panels from metrics.jsonl, one run or several, and `tamer plot`'s errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tamer.cli import main
from tamer.train.curves import _panels, plot_runs, read_metrics


def fake_run(folder, kind="vqgan", steps=300, best=None):
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "epoch": 0, "lr": 1e-3 * min(1, step / 50), "elapsed_s": step * 0.1}
        if kind == "vqgan":
            record |= {"total_loss": 1 / step ** 0.5, "pixel_loss": 0.5 / step ** 0.5, "d_weight": 0.3,
                       "codebook_usage": min(1.0, step / 200), "perplexity": step / 2}
        else:
            record |= {"loss": 5 - step / 100, "bits_per_token": (5 - step / 100) / 0.693}
        lines.append(json.dumps(record))
        if step % 100 == 0:
            figures = {"val/psnr": 15 + step / 50, "val/ssim": 0.3, "val/codebook_usage": 0.9} if kind == "vqgan" \
                else {"val/nll": 4.5 - step / 1000, "val/bits_per_token": 6.0}
            lines.append(json.dumps({"step": step, **figures}))
    lines.append(json.dumps({"step": 100, "epoch": 0, "lr": 1e-3, "total_loss": 9.0}))  # a resumed run's replay
    (folder / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 301, "lo')  # cut short by a crash
    if best is not None:
        (folder / "best.json").write_text(json.dumps({"step": best, "metric": "psnr", "value": 20, "mode": "max"}))
    return folder


def test_records_by_step_the_last_one_counting(tmp_path):
    train, validation = read_metrics(fake_run(tmp_path / "run"))
    assert len(train) == 300 and sorted(validation) == [100, 200, 300]
    assert train[100]["total_loss"] == 9.0  # the replayed record replaces the first
    titles = [title for title, _, _ in _panels([(train, validation)])]
    assert titles == ["training losses", "learning rate", "held-out PSNR (dB)", "held-out SSIM",
                      "codebook usage (share of codes used)", "codebook perplexity"]
    assert _panels([(train, validation)])[0][2] == ["pixel_loss", "total_loss"]  # d_weight is not a loss


def test_one_run_and_a_comparison_are_readable_pictures(tmp_path):
    one = plot_runs([fake_run(tmp_path / "vq", best=200)], tmp_path / "one.png")
    picture = Image.open(one)
    picture.verify()
    picture = Image.open(one)
    assert picture.format == "PNG" and picture.width >= 1200 and picture.height >= 1000  # 3 rows of 2 panels
    pixels = np.asarray(picture.convert("L"))
    assert pixels.min() < 60 and (pixels < 250).mean() > 0.02  # lines and text, not a blank canvas

    both = plot_runs([tmp_path / "vq", fake_run(tmp_path / "gpt", kind="transformer")], tmp_path / "both.png")
    assert Image.open(both).size[0] >= 1200


def test_plot_command(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert Image.open(run / "curves.png").format == "PNG"
    assert f"wrote {run / 'curves.png'} (1 run)" in capsys.readouterr().out
    other = fake_run(tmp_path / "other", kind="transformer")
    assert main(["plot", str(run), str(other), "--out", str(tmp_path / "cmp.png")]) == 0
    assert (tmp_path / "cmp.png").is_file()

    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{tmp_path / 'empty'}: no metrics.jsonl (not a training run "
                                                    "folder)")
    assert main(["plot", str(run), "--out", str(tmp_path / "x.jpg")]) == 1
    assert "expected a .png file name" in capsys.readouterr().err


def test_curves_need_matplotlib(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(Exception, match=r"curves need matplotlib: pip install 'tamer-vq\[train\]'"):
        plot_runs([fake_run(tmp_path / "run")], tmp_path / "c.png")
