"""Held-out likelihood: NLL per token against a hand computation, the bits conversions, and `tamer eval nll`."""

import json
import math

import pytest
import torch

import tamer
from tamer import Transformer, TransformerConfig, VQGANConfig
from tamer.ar.conditioning import ConditioningConfig
from tamer.cli import main as cli
from tamer.data import ProceduralShapes
from tamer.metrics.likelihood import bits_per_dim, evaluate_likelihood, nats_to_bits
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.gpt import GPTConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.train.transformer_task import TransformerTask


def tiny_transformer(kind: str = "class") -> Transformer:
    """f2 VQGAN (16×16 -> 8×8 codes of 32), a one-layer GPT; random weights, a non-zero position embedding."""
    first = VQGANConfig(autoencoder=AutoencoderConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                                      z_channels=8, resolution=16),
                        quantizer=QuantizerConfig(num_codes=32, embed_dim=8))
    conditioning = ConditioningConfig(kind=kind, num_classes=10 if kind == "class" else 0)
    vocab = 32 + conditioning.stage_vocab_size
    model = Transformer(TransformerConfig(gpt=GPTConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=2,
                                                        n_embd=32), first_stage=first, conditioning=conditioning,
                                         code_shape=(8, 8)))
    with torch.no_grad():
        model.transformer.pos_emb.normal_(0, 0.5)
        model.transformer.head.weight.normal_(0, 0.5)  # logits far from uniform
    return model.eval()


def hand_nll(model: Transformer, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """``-log_softmax`` over the image codebook, gathered at each true code: ``B×64``."""
    codes = model.first_stage_model.encode(images).reshape(len(images), -1)  # raster order
    start = labels[:, None] + 32 if labels is not None else torch.full((len(images), 1), 32)
    logits, _ = model.transformer(torch.cat((start, codes[:, :-1]), dim=1))
    log_probs = torch.log_softmax(logits[..., :32].double(), dim=-1)
    return -log_probs.gather(-1, codes[..., None])[..., 0]


@pytest.mark.parametrize("kind", ["class", "none"])
def test_nll_equals_a_hand_computation(kind):
    model = tiny_transformer(kind)
    data = ProceduralShapes(16, 10, seed=3)
    images = torch.stack([data[i]["image"] for i in range(10)])
    labels = torch.stack([data[i]["label"] for i in range(10)]) if kind == "class" else None
    with torch.no_grad():
        expected = hand_nll(model, images, labels)
    result = evaluate_likelihood(model, data, batch_size=4, progress=False)  # batches of 4, 4, 2
    nats = expected.mean().item()
    assert result.metrics["nll"] == pytest.approx(nats, rel=1e-5)
    assert result.metrics["bits_per_token"] == pytest.approx(nats / math.log(2), rel=1e-5)
    per_image_bits = expected.sum(1) / math.log(2)
    assert result.metrics["bits_per_dim"] == pytest.approx(per_image_bits.mean().item() / (16 * 16 * 3), rel=1e-5)
    assert result.metrics["bits_per_dim_stderr"] == pytest.approx(
        per_image_bits.std().item() / math.sqrt(10) / (16 * 16 * 3), rel=1e-4)
    assert result.protocol["num_images"] == 10 and result.protocol["tokens_per_image"] == 64
    assert 2.0 < nats < 8.0  # not the uniform 3.47: the logits were made far from flat

    # Training's validation reports the same numbers from the same data.
    task = TransformerTask(model)
    batches = [{k: torch.stack([data[i][k] for i in range(j, min(j + 4, 10))]) for k in ("image", "label")}
               for j in (0, 4, 8)]
    with torch.no_grad():
        validation = task.validate(model.transformer, iter(batches))
    for key in ("nll", "bits_per_token", "bits_per_dim"):
        assert validation[key] == pytest.approx(result.metrics[key], rel=1e-5), key


def test_bits_conversions():
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bits(math.log(256)) == pytest.approx(8.0)
    # 256 tokens of 8 bits each over a 256×256 RGB image: 2048 bits / 196608 values.
    assert bits_per_dim(256 * math.log(256), 256, 256) == pytest.approx(2048 / (256 * 256 * 3))
    assert bits_per_dim(math.log(2), 1, 1, channels=1) == pytest.approx(1.0)


def test_eval_nll_command(tmp_path, capsys):
    model = tiny_transformer("class")
    model.save(tmp_path / "model")
    out = tmp_path / "nll.json"
    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", "procedural", "--limit", "6",
                "--batch-size", "4", "--device", "cpu", "--precision", "fp32", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bits_per_dim" in printed and "nll" in printed and "precision: fp32\n" in printed
    saved = json.loads(out.read_text())
    assert saved["task"] == "likelihood" and saved["protocol"]["num_images"] == 6
    assert saved["protocol"]["data"]["config"]["seed"] == 12345  # the held-out procedural seed
    data = ProceduralShapes(16, 6, seed=12345)
    images = torch.stack([data[i]["image"] for i in range(6)])
    labels = torch.stack([data[i]["label"] for i in range(6)])
    with torch.no_grad():
        expected = hand_nll(tamer.load(tmp_path / "model"), images, labels).mean().item()
    assert saved["metrics"]["nll"] == pytest.approx(expected, rel=1e-5)
    assert saved["protocol"]["precision"] == "fp32"
    # bf16 autocast (what auto picks where bf16 is fast): codes still encoded in fp32, NLL within 0.01 nats
    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", "procedural", "--limit", "6",
                "--batch-size", "4", "--device", "cpu", "--precision", "bf16",
                "--out", str(tmp_path / "bf16.json")]) == 0
    saved = json.loads((tmp_path / "bf16.json").read_text())
    assert saved["protocol"]["precision"] == "bf16" and abs(saved["metrics"]["nll"] - expected) < 0.01

    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", "procedural", "--size", "32"]) == 1
    assert "trained on 16×16 images" in capsys.readouterr().err
    model.first_stage_model.save(tmp_path / "vqgan")
    assert cli(["eval", "nll", "--model", str(tmp_path / "vqgan"), "--data", "procedural"]) == 1
    assert "needs a Transformer" in capsys.readouterr().err


def test_conditional_model_needs_its_condition(tmp_path):
    from tamer.data import write_procedural_dataset

    write_procedural_dataset(tmp_path / "data", count=3, size=16, progress=False)
    model = tiny_transformer("class")
    from tamer.data import ImageFolder

    with pytest.raises(ValueError, match="conditioned on 'label'"):
        evaluate_likelihood(model, ImageFolder(tmp_path / "data" / "images"), progress=False)


def test_eval_nll_reads_a_class_folder_directly(tmp_path, capsys):
    import shutil
    from dataclasses import replace

    from tamer.data import ClassFolder, class_folder_name, write_procedural_dataset

    write_procedural_dataset(tmp_path / "data", count=6, size=16, seed=12345, progress=False)
    folder = tmp_path / "data" / "images"
    names = tuple(class_folder_name(k) for k in range(10))
    model = tiny_transformer("class")
    model.config.conditioning = replace(model.config.conditioning, class_names=names)
    model.save(tmp_path / "model")
    out = tmp_path / "nll.json"
    # a class model reads a folder as classes without being told
    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", str(folder), "--device", "cpu",
                "--precision", "fp32", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["protocol"]["data"]["config"]["kind"] == "classes" and saved["protocol"]["num_images"] == 6
    items = ClassFolder(folder)
    images = torch.stack([items[i]["image"] for i in range(6)])
    labels = torch.stack([items[i]["label"] for i in range(6)])
    with torch.no_grad():
        expected = hand_nll(tamer.load(tmp_path / "model"), images, labels).mean().item()
    assert saved["metrics"]["nll"] == pytest.approx(expected, rel=1e-5)

    capsys.readouterr()
    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", str(folder), "--kind", "images"]) == 1
    assert "conditioned on 'label'" in capsys.readouterr().err
    shutil.rmtree(folder / names[4])  # a held-out folder without one class: every later label would shift
    assert cli(["eval", "nll", "--model", str(tmp_path / "model"), "--data", str(folder)]) == 1
    assert f"--data {folder}: its classes differ from the model's (missing {names[4]})" in capsys.readouterr().err
