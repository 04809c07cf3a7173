"""Evaluation (`tamer eval`): metric formulas against float64 references, the whole FID pipeline offline with
random Inception weights, refusal of a code-running weights file, reference statistics reuse, reconstruction
metrics end to end, stand-in feature networks, and classifier rejection sampling."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from tamer.data import DataConfig, ProceduralShapes, build_dataset
from tamer.imageio import save_image
from tamer.metrics import (
    InceptionFeatures,
    StandInFeatures,
    classifier_scores,
    codebook_statistics,
    compute_reference,
    evaluate_reconstructions,
    evaluate_samples,
    feature_statistics,
    frechet_distance,
    kernel_distance,
    psnr,
    reject,
    ssim,
)
from tamer.metrics.inception import INCEPTION_FILENAME, INCEPTION_NAME, MissingWeightsError
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig

SIZE, COUNT = 32, 6


def run_cli(argv: list[str]) -> int:
    """``tamer ...`` through the real command."""
    from tamer import cli

    return cli.main(argv)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved in its key layout (the real file cannot be fetched)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as patch:  # build the architecture without loading (or downloading) weights
        patch.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        network = fe.FeatureExtractorInceptionV3(INCEPTION_NAME, ["2048"])
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():  # variance-preserving init, so deep features neither vanish nor explode
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    path = tmp_path_factory.mktemp("hub") / INCEPTION_FILENAME
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception(inception_weights):
    return InceptionFeatures(inception_weights)


def write_images(folder, seed: int, count: int = COUNT):
    folder.mkdir(parents=True, exist_ok=True)
    dataset = ProceduralShapes(size=SIZE, length=count, seed=seed)
    for i in range(count):
        save_image(dataset[i]["image"], folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_images(root / "samples", seed=1), write_images(root / "reference", seed=2)


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """A torch hub cache holding no weights at all (through TORCH_HOME: torch.hub.set_dir would outlive the test)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    config = VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                                           z_channels=8, resolution=SIZE), QuantizerConfig(num_codes=64, embed_dim=8))
    torch.manual_seed(0)
    VQGAN(config).save(path)
    return path


class TinyClassifier(nn.Module):
    """A small CNN: images in [-1, 1] -> (8-d features, 10 logits); stands in for a classifier of the shapes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


class MeanAbsoluteDistance(nn.Module):
    """Stands in for an LPIPS module: ``(x, y)`` -> ``B×1×1×1`` distances."""

    def forward(self, x, y):
        return (x - y).abs().mean(dim=(1, 2, 3), keepdim=True)


# ---------------------------------------------------------------- formulas


def test_frechet_distance_matches_a_float64_scipy_reference():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    stats_a, stats_b = feature_statistics(torch.from_numpy(a).float()), feature_statistics(torch.from_numpy(b))
    assert frechet_distance(stats_a, stats_b) == pytest.approx(expected, rel=1e-5)
    assert frechet_distance(stats_a, stats_a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="different feature networks"):
        frechet_distance(stats_a, feature_statistics(torch.randn(10, 4)))


def test_frechet_distance_from_few_features_equals_torch_fidelitys_eigenvalue_route():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(10, 64, generator=generator), torch.randn(30, 64, generator=generator) * 1.5 + 0.1
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    expected = fid_statistics_to_metric(vars(stats_a), vars(stats_b), verbose=False)["frechet_inception_distance"]
    # equal up to the round-off of the general route, whose zero eigenvalues come out as ±1e-13 (sqrt: ~1e-7 each)
    assert frechet_distance(stats_a, stats_b, features_a=a) == pytest.approx(expected, rel=1e-7)


def test_kernel_distance_matches_a_float64_numpy_reference():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) + 0.2
    m, d = len(a), a.shape[1]

    def kernel(x, y):
        return (x @ y.T / d + 1) ** 3

    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    expected = ((k_aa.sum() - np.trace(k_aa)) + (k_bb.sum() - np.trace(k_bb))) / (m * (m - 1)) - 2 * k_ab.mean()
    # with subsets as large as the sets, every subset is a permutation and the unbiased MMD² is exact
    mean, std = kernel_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float(), subsets=5, subset_size=m)
    assert mean == pytest.approx(expected, rel=1e-5)
    assert std == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- the FID pipeline, offline


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # torch-fidelity's own loader, 4 workers
def test_fid_pipeline_agrees_with_torch_fidelity_and_reuses_saved_statistics(inception, inception_weights,
                                                                             image_sets, tmp_path):
    import torch_fidelity

    samples, reference = image_sets
    saved = tmp_path / "reference.npz"
    first = evaluate_samples(samples, reference, features=inception, batch_size=COUNT, device="cpu",
                             save_reference=saved)
    assert {"FID", "KID", "KID_std", "IS", "IS_std", "precision", "recall"} <= set(first.metrics)
    assert first.metrics["FID"] > 0

    expected = torch_fidelity.calculate_metrics(
        input1=str(samples), input2=str(reference), cuda=False, fid=True, kid=True, isc=True, prc=True,
        feature_extractor=INCEPTION_NAME,  # precision/recall on Inception features too (its default is VGG16)
        kid_subset_size=COUNT, isc_splits=COUNT, feature_extractor_weights_path=str(inception_weights),
        cache=False, verbose=False)
    assert first.metrics["FID"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-3)
    assert first.metrics["KID"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-3)
    assert first.metrics["IS"] == pytest.approx(expected["inception_score_mean"], rel=1e-3)
    assert (first.metrics["precision"], first.metrics["recall"]) == (expected["precision"], expected["recall"])

    protocol = first.protocol
    assert protocol["num_images"] == {"samples": COUNT, "reference": COUNT}
    assert protocol["reference"]["kind"] == "folder"
    assert protocol["feature_network"]["weights"] == str(inception_weights)
    assert "299×299" in protocol["feature_network"]["resize"]
    assert protocol["feature_network"]["internal_dtype"] == "float32"
    assert protocol["kid"]["subset_size"] == COUNT
    assert {"torch", "torch-fidelity", "numpy", "tamer"} <= set(protocol["versions"])

    with np.load(saved, allow_pickle=False) as data:  # the ADM/MAR layout, plus tamer's features and protocol
        assert {"mu", "sigma", "features", "protocol"} == set(data.files)
        assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048)
        assert json.loads(str(data["protocol"]))["num_images"] == COUNT
    again = evaluate_samples(samples, saved, features=inception, batch_size=COUNT, device="cpu")
    assert again.metrics == first.metrics
    assert again.protocol["reference"]["kind"] == "statistics"

    adm = tmp_path / "adm.npz"  # an ADM/MAR-style file: mu and sigma only
    with np.load(saved) as data:
        np.savez(adm, mu=data["mu"], sigma=data["sigma"])
    fid_only = evaluate_samples(samples, adm, features=inception, batch_size=COUNT, device="cpu")
    assert fid_only.metrics["FID"] == first.metrics["FID"]
    assert "KID" not in fid_only.metrics and any("KID and precision/recall skipped" in n for n in fid_only.notes)


def test_samples_command_builds_inception_from_the_named_file_and_writes_json(inception_weights, image_sets,
                                                                              tmp_path, capsys):
    samples, reference = image_sets
    out = tmp_path / "results.json"
    assert run_cli(["eval", "samples", "--samples", str(samples), "--ref", str(reference), "--inception",
                    str(inception_weights), "--batch-size", "4", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["task"] == "samples" and result["metrics"]["FID"] > 0
    assert f"{result['metrics']['FID']:.4f}" in printed and "FID" in printed
    assert result["protocol"]["feature_network"]["weights_sha256_prefix"]


def test_a_weights_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path, image_sets, capsys):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    poisoned = tmp_path / INCEPTION_FILENAME
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "fc.weight": Payload()}, poisoned)

    from tamer.compat.safe_load import UnsafeCheckpointError

    with pytest.raises(UnsafeCheckpointError, match="refused.*exec"):
        InceptionFeatures(poisoned)
    samples, reference = image_sets
    assert run_cli(["eval", "samples", "--samples", str(samples), "--ref", str(reference),
                    "--inception", str(poisoned)]) == 1
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()

    # torch-fidelity's own read (weights_only=False) is forced through the safe unpickler while tamer builds it
    import os
    import pickle

    from tamer.metrics.inception import weights_only_loads

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError):
        torch.load(poisoned, weights_only=False)
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before and not marker.exists()
    torch.load(poisoned, weights_only=False)  # the control: the payload is live, an unchecked load runs it
    assert marker.read_text() == "ran"


def test_missing_inception_weights_say_how_to_provide_them(empty_hub, image_sets, tmp_path):
    samples, reference = image_sets
    with pytest.raises(MissingWeightsError, match=f"{INCEPTION_FILENAME}.*never downloads.*--inception"):
        evaluate_samples(samples, reference, device="cpu")
    with pytest.raises(MissingWeightsError, match="no Inception weights file at"):
        evaluate_samples(samples, reference, inception_path=tmp_path / "typo.pth", device="cpu")


# ---------------------------------------------------------------- reconstructions


def test_recon_command_end_to_end_agrees_with_the_image_metrics(model_dir, inception_weights, tmp_path, capsys):
    out = tmp_path / "recon.json"
    assert run_cli(["eval", "recon", "--model", str(model_dir), "--data", "procedural", "--limit", str(COUNT),
                    "--batch-size", "4", "--device", "cpu", "--inception", str(inception_weights),
                    "--precision", "fp32", "--out", str(out)]) == 0  # compared with fp32 below
    assert "psnr" in capsys.readouterr().out
    result = json.loads(out.read_text())
    metrics = result["metrics"]

    model = VQGAN.from_pretrained(model_dir).eval()
    dataset = build_dataset(DataConfig(kind="procedural", size=SIZE, length=COUNT, seed=12345))
    images = torch.stack([dataset[i]["image"] for i in range(COUNT)])
    with torch.no_grad():
        out_ = model(images)
    reconstruction = out_.reconstruction.clamp(-1, 1)
    assert metrics["psnr"] == pytest.approx(psnr(reconstruction, images).mean().item(), abs=1e-4)
    assert metrics["ssim"] == pytest.approx(ssim(reconstruction, images).mean().item(), abs=1e-5)
    counts = torch.bincount(out_.indices.flatten(), minlength=model.vocab_size).float()
    assert metrics["perplexity"] == pytest.approx(codebook_statistics(counts)["perplexity"], rel=1e-6)
    assert metrics["codebook_usage"] == codebook_statistics(counts)["codebook_usage"]
    assert metrics["rFID"] > 0 and "FID" not in metrics
    assert result["protocol"]["num_images"] == COUNT
    assert result["protocol"]["data"]["config"]["seed"] == 12345
    assert "uint8" in result["protocol"]["rfid"]


def test_validation_during_training_reports_what_eval_recon_reports(model_dir):
    from tamer.train.vqgan_task import VQGANTask
    from tamer.vqgan.loss import VQGANLoss, VQGANLossConfig

    model = VQGAN.from_pretrained(model_dir).eval()
    dataset = ProceduralShapes(size=SIZE, length=6, seed=5)
    loss = VQGANLoss(VQGANLossConfig(perceptual_weight=1.0), perceptual=MeanAbsoluteDistance())
    batches = [{"image": torch.stack([dataset[i]["image"] for i in range(start, start + 3)])} for start in (0, 3)]
    with torch.no_grad():
        validation = VQGANTask(model, loss).validate(model, iter(batches))
    evaluation = evaluate_reconstructions(model, dataset, batch_size=2, fid=False, lpips=MeanAbsoluteDistance())
    assert set(validation) == set(evaluation.metrics)
    for name, value in evaluation.metrics.items():
        assert validation[name] == pytest.approx(value, rel=1e-5), name


def test_recon_without_weights_computes_the_rest_and_says_what_is_missing(model_dir, empty_hub):
    model = VQGAN.from_pretrained(model_dir)
    dataset = ProceduralShapes(size=SIZE, length=3, seed=5)
    result = evaluate_reconstructions(model, dataset, batch_size=2)
    assert {"psnr", "ssim", "codebook_usage", "perplexity"} <= set(result.metrics)
    assert "rFID" not in result.metrics and "lpips" not in result.metrics
    assert any(note.startswith("LPIPS not computed") and "vgg16" in note for note in result.notes)
    assert any(note.startswith("rFID not computed") and INCEPTION_FILENAME in note for note in result.notes)


def test_recon_reads_class_and_pair_folders_as_their_images(model_dir, tmp_path):
    from tamer.data import write_procedural_dataset

    write_procedural_dataset(tmp_path / "data", count=4, size=SIZE, progress=False)
    pairs = tmp_path / "data"  # data/images/<class>/... beside data/segmentations/<class>/...
    results = {}
    for kind, folder in (("classes", pairs / "images"), ("pairs", pairs), ("images", pairs / "images")):
        out = tmp_path / f"{kind}.json"
        assert run_cli(["eval", "recon", "--model", str(model_dir), "--data", str(folder), "--kind", kind,
                        "--no-lpips", "--no-fid", "--device", "cpu", "--out", str(out)]) == 0
        saved = json.loads(out.read_text())
        assert saved["protocol"]["data"]["config"]["kind"] == {"images": "folder"}.get(kind, kind)
        results[kind] = saved["metrics"]["psnr"]
    assert results["classes"] == pytest.approx(results["images"]) == pytest.approx(results["pairs"])  # same images


# ---------------------------------------------------------------- stand-in feature networks


def test_a_stand_in_network_names_its_metrics_after_itself(model_dir, tmp_path):
    network = StandInFeatures(TinyClassifier(), "shapes-cnn")
    real = torch.stack([ProceduralShapes(size=SIZE, length=12, seed=3)[i]["image"] for i in range(12)])
    fake = torch.stack([ProceduralShapes(size=SIZE, length=10, seed=4)[i]["image"] for i in range(10)])
    reference = compute_reference(real, features=network, device="cpu")
    result = evaluate_samples(fake, reference, features=network, device="cpu")
    assert set(result.metrics) == {"FD_shapes-cnn", "KD_shapes-cnn", "KD_shapes-cnn_std", "IS_shapes-cnn",
                                   "IS_shapes-cnn_std", "precision_shapes-cnn", "recall_shapes-cnn"}
    assert "stand-in" in result.protocol["feature_network"]["network"]

    path = reference.save(tmp_path / "shapes.npz")  # statistics of one network are refused for another
    with pytest.raises(ValueError, match="feature network 'shapes-cnn', not 'other'"):
        evaluate_samples(fake, path, features=StandInFeatures(TinyClassifier(), "other"), device="cpu")

    recon = evaluate_reconstructions(VQGAN.from_pretrained(model_dir), ProceduralShapes(size=SIZE, length=4),
                                     features=network, lpips=MeanAbsoluteDistance())
    assert "rFD_shapes-cnn" in recon.metrics and "rFID" not in recon.metrics
    assert recon.metrics["lpips"] == pytest.approx(recon.metrics["l1"], rel=1e-5)  # a given distance module is used
    with pytest.raises(ValueError, match="kept for the torch-fidelity Inception"):
        StandInFeatures(TinyClassifier(), "inception")


def test_a_torchvision_classifier_stands_in_from_the_command_line(image_sets, tmp_path, capsys):
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    samples, reference = image_sets
    stats = tmp_path / "ref.npz"
    assert run_cli(["eval", "reference", "--images", str(reference), "--features", f"resnet18={weights}",
                    "--device", "cpu", "--out", str(stats)]) == 0
    out = tmp_path / "results.json"
    assert run_cli(["eval", "samples", "--samples", str(samples), "--ref", str(stats), "--features",
                    f"resnet18={weights}", "--device", "cpu", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert "FD_resnet18" in metrics and "IS_resnet18" in metrics and "FID" not in metrics


# ---------------------------------------------------------------- rejection sampling


def test_rejection_keeps_the_top_fraction_by_score():
    scores = torch.rand(100, generator=torch.Generator().manual_seed(0))
    samples = torch.arange(100).float()[:, None].expand(100, 3)
    kept = reject(scores, 0.25)
    assert len(kept.kept) == 25 and kept.acceptance_rate == 0.25 and kept.candidates == 100
    assert set(kept.kept.tolist()) == set(scores.topk(25).indices.tolist())
    assert torch.equal(kept.scores, scores.sort(descending=True).values[:25])
    assert kept.threshold == kept.scores.min().item() and (scores[kept.kept] >= kept.threshold).all()
    assert torch.equal(kept.select(samples)[:, 0].long(), kept.kept)
    assert len(reject(torch.rand(30), 0.05).kept) == 2  # ceil(1.5): never below the asked rate
    assert len(reject(torch.rand(3), 0.01).kept) == 1
    with pytest.raises(ValueError, match="acceptance_rate"):
        reject(scores, 0.0)

    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    images, labels = torch.randn(7, 3, 4, 4), torch.randint(0, 5, (7,))
    expected = classifier(images).softmax(-1)
    assert torch.allclose(classifier_scores(classifier, images, labels, batch_size=3),
                          expected.gather(1, labels[:, None])[:, 0])
    assert torch.allclose(classifier_scores(classifier, images, batch_size=3), expected.amax(-1))
