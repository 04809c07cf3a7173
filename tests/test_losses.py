"""The stage-1 loss against the original CompVis code: same weights and inputs in, same numbers out."""

import importlib.util
import sys
import types
import warnings

import pytest
import torch
import yaml
from torchvision.models import vgg as tv_vgg

# The original's lpips module imports `taming.util`, which imports `requests` for a download we patch out; a stub
# stands in while it is imported, and only then, so that no other test sees a fake `requests`.
_STUB_REQUESTS = importlib.util.find_spec("requests") is None
if _STUB_REQUESTS:
    sys.modules["requests"] = types.ModuleType("requests")
import taming.modules.losses.lpips as original_lpips  # noqa: E402

if _STUB_REQUESTS:
    del sys.modules["requests"]
from taming.modules.discriminator.model import NLayerDiscriminator as OriginalDiscriminator  # noqa: E402
from taming.modules.discriminator.model import weights_init  # noqa: E402
from taming.modules.losses.segmentation import BCELossWithQuant  # noqa: E402
from taming.modules.losses.vqperceptual import VQLPIPSWithDiscriminator  # noqa: E402
from taming.modules.losses.vqperceptual import hinge_d_loss as original_hinge  # noqa: E402
from taming.modules.losses.vqperceptual import vanilla_d_loss as original_vanilla  # noqa: E402

from oracle import quiet  # noqa: E402
from tamer.config import ConfigError, from_dict  # noqa: E402
from tamer.nn.discriminator import NLayerDiscriminator  # noqa: E402
from tamer.nn.perceptual import (  # noqa: E402
    VGG16_FILENAME,
    PerceptualUnavailableWarning,
    load_lpips,
    lpips_from_compvis,
    lpips_heads_path,
    lpips_unavailable_reason,
)
from tamer.vqgan.loss import (  # noqa: E402
    NonFiniteLossError,
    VQGANLoss,
    VQGANLossConfig,
    adaptive_weight,
    check_finite,
    hinge_d_loss,
    vanilla_d_loss,
)
from tamer.vqgan.model import one_hot_labels  # noqa: E402


class TinyAutoencoder(torch.nn.Module):
    """A real graph ending in a decoder-like last conv, at a fraction of a VQGAN's cost on a shared CPU."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(),
                                       torch.nn.Conv2d(8, 3, 3, padding=1))

    @property
    def last_layer(self) -> torch.Tensor:
        return self.net[-1].weight

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (reconstruction, a stand-in quantizer loss with a graph)."""
        return x + self.net(x), self.net[0].weight.square().mean()


def images(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1


@pytest.fixture(scope="module")
def vgg_features() -> torch.nn.Sequential:
    """A VGG16 trunk with random weights (biases too), standing in for the ImageNet one neither side may download."""
    torch.manual_seed(1)
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    with torch.no_grad():
        for module in features:
            if isinstance(module, torch.nn.Conv2d):
                module.bias.normal_(0, 0.1)
    return features.eval()


@pytest.fixture(scope="module")
def vgg_file(vgg_features, tmp_path_factory):
    """The trunk saved as torchvision lays out its cached ``vgg16-397923af.pth``."""
    path = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints" / VGG16_FILENAME
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in vgg_features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def original_loss_factory(vgg_features):
    """Builds the original ``VQLPIPSWithDiscriminator`` with the random trunk and the real v0.1 heads, offline."""
    def fake_vgg16(pretrained=True, **kwargs):
        trunk = tv_vgg.make_layers(tv_vgg.cfgs["D"])
        trunk.load_state_dict(vgg_features.state_dict())
        return types.SimpleNamespace(features=trunk)

    def heads_from_lpips_package(self, name="vgg_lpips"):
        self.load_state_dict(torch.load(lpips_heads_path(), map_location="cpu", weights_only=True), strict=False)

    def build(**params):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(original_lpips.models, "vgg16", fake_vgg16)
            patch.setattr(original_lpips.LPIPS, "load_from_pretrained", heads_from_lpips_package)
            return quiet(VQLPIPSWithDiscriminator, **params)

    return build


@pytest.fixture(scope="module")
def ours_lpips(vgg_file):
    return load_lpips(vgg_file)


# --- discriminator ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("actnorm", [False, True], ids=["batchnorm", "actnorm"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_discriminator_matches_original(actnorm, n_layers):
    torch.manual_seed(3)
    ours = NLayerDiscriminator(in_channels=3, ndf=8, n_layers=n_layers, use_actnorm=actnorm)
    torch.manual_seed(3)
    theirs = OriginalDiscriminator(input_nc=3, ndf=8, n_layers=n_layers, use_actnorm=actnorm).apply(weights_init)
    # Same names, same shapes, and the same random init draw for draw.
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    with torch.no_grad():
        for batch in (images(4, 32), images(4, 32) * 0.5 + 0.2):  # the first training batch sets ActNorm's statistics
            assert torch.allclose(ours(batch), theirs(batch), atol=1e-5)
        for key, value in theirs.state_dict().items():  # ActNorm loc/scale/initialized, BatchNorm running stats
            assert torch.allclose(ours.state_dict()[key].float(), value.float(), atol=1e-6), key
        ours.eval()
        theirs.eval()
        batch = images(2, 48)
        assert torch.allclose(ours(batch), theirs(batch), atol=1e-5)
        assert ours(batch).shape == ((2, 1, 4, 4) if n_layers == 3 else (2, 1, 22, 22))


def test_actnorm_initializes_once_and_again_after_loading_an_uninitialized_state():
    disc = NLayerDiscriminator(ndf=8, n_layers=2, use_actnorm=True)
    fresh = {k: v.clone() for k, v in disc.state_dict().items()}
    norm = disc.main[3]
    with torch.no_grad():
        disc(images(4))
        loc = norm.loc.clone()
        disc(images(4) + 1)
        assert torch.equal(norm.loc, loc) and norm.initialized.item() == 1  # not re-initialized
        disc.load_state_dict(fresh)
        disc(images(4) + 1)
        assert not torch.equal(norm.loc, loc)  # the loaded state said "not initialized": it initializes again


# --- loss functions, adaptive weight ------------------------------------------------------------------------------


def test_discriminator_losses_match_original():
    real, fake = torch.randn(4, 1, 6, 6) * 2, torch.randn(4, 1, 6, 6) * 2
    assert torch.allclose(hinge_d_loss(real, fake), original_hinge(real, fake), atol=1e-6)
    assert torch.allclose(vanilla_d_loss(real, fake), original_vanilla(real, fake), atol=1e-6)


def test_adaptive_weight_matches_original(original_loss_factory):
    original = original_loss_factory(disc_start=0, disc_weight=0.8, disc_ndf=8, disc_num_layers=2)
    model, disc = TinyAutoencoder(), NLayerDiscriminator(ndf=8, n_layers=2)
    x = images()
    reconstruction, _ = model(x)
    rec_loss = (x - reconstruction).abs().mean()
    gan_loss = -disc(reconstruction).mean()

    ours = adaptive_weight(rec_loss, gan_loss, model.last_layer, scale=0.8)
    theirs = original.calculate_adaptive_weight(rec_loss, gan_loss, last_layer=model.last_layer)
    assert torch.allclose(ours, theirs, rtol=1e-5) and ours > 0
    with torch.no_grad():  # evaluation: no graph, no crash, weight 0
        assert adaptive_weight((x - model(x)[0]).abs().mean(), gan_loss.detach(), model.last_layer) == 0


# --- perceptual ---------------------------------------------------------------------------------------------------


def test_lpips_matches_original(ours_lpips, original_loss_factory):
    theirs = original_loss_factory(disc_start=0).perceptual_loss.eval()
    x, y = images(), images()
    with torch.no_grad():
        expected = theirs(x, y)
        assert torch.allclose(ours_lpips(x, y), expected, atol=1e-5)
        assert expected.shape == (2, 1, 1, 1) and (expected > 0).all()
        compvis_state = {f"loss.perceptual_loss.{k}": v for k, v in theirs.state_dict().items()}
        assert torch.allclose(lpips_from_compvis(compvis_state)(x, y), expected, atol=1e-5)
    assert lpips_from_compvis({"loss.discriminator.main.0.weight": torch.zeros(1)}) is None


def test_lpips_is_frozen_but_passes_gradient_to_images(ours_lpips):
    ours_lpips.train()
    assert not ours_lpips.training and not any(m.training for m in ours_lpips.modules())  # dropout stays off
    assert not any(p.requires_grad for p in ours_lpips.parameters())
    x = images().requires_grad_()
    ours_lpips(x, images()).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_perceptual_loss_unavailable_without_vgg_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: no VGG16 file anywhere
    reason = lpips_unavailable_reason()
    assert reason is not None and str(tmp_path) in reason and VGG16_FILENAME in reason
    with pytest.warns(PerceptualUnavailableWarning, match="perceptual loss is OFF"):
        assert load_lpips() is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = VQGANLoss.from_config(VQGANLossConfig(disc_ndf=8, disc_num_layers=2))
    assert [str(w.message) for w in caught] == [reason]  # said once, clearly
    assert not loss.perceptual_available
    x = images()
    total, logs = loss.generator_loss(x, x.flip(0), torch.tensor(0.0), torch.zeros(1, requires_grad=True), 0)
    assert logs["p_loss"] == 0 and torch.isfinite(total)
    with pytest.raises(FileNotFoundError, match="vgg_path"):
        load_lpips(tmp_path / "typo.pth")


def test_vgg_file_with_the_wrong_layout_is_an_error(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        load_lpips(path)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="missing"):
        load_lpips(path)


# --- the whole loss -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disc_loss, step, actnorm", [("hinge", 5, False), ("vanilla", 7, False), ("hinge", 2, False),
                                                     ("hinge", 5, True)],
                         ids=["hinge", "vanilla", "before-disc-start", "actnorm"])
def test_vqgan_loss_matches_original(disc_loss, step, actnorm, ours_lpips, original_loss_factory):
    params = dict(disc_start=5, codebook_weight=0.7, disc_weight=0.8, disc_factor=0.9, perceptual_weight=1.3,
                  disc_num_layers=2, disc_ndf=8, disc_loss=disc_loss, use_actnorm=actnorm)
    original = original_loss_factory(**params)
    original.perceptual_loss.eval()  # a loss, not a calibration run: no dropout in the heads (ours is always so)
    ours = VQGANLoss(from_dict(VQGANLossConfig, params), ours_lpips)
    ours.discriminator.load_state_dict(original.discriminator.state_dict())
    model, x = TinyAutoencoder(), images()
    reconstruction, quantizer_loss = model(x)

    loss, logs = ours.generator_loss(x, reconstruction, quantizer_loss, model.last_layer, step)
    expected, expected_logs = original(quantizer_loss, x, reconstruction, 0, step, model.last_layer)
    assert torch.allclose(loss, expected, atol=1e-5)
    for key in ("nll_loss", "p_loss", "quant_loss", "disc_factor") + (("d_weight", "g_loss") if step >= 5 else ()):
        assert torch.allclose(logs[key].float(), expected_logs[f"train/{key}"].float(), rtol=1e-4, atol=1e-6), key
    grads = torch.autograd.grad(loss, model.last_layer, retain_graph=True)[0]
    assert torch.allclose(grads, torch.autograd.grad(expected, model.last_layer)[0], atol=1e-6)

    d_loss, d_logs = ours.discriminator_loss(x, reconstruction, step)
    expected, expected_logs = original(quantizer_loss, x, reconstruction, 1, step, model.last_layer)
    assert torch.allclose(d_loss, expected, atol=1e-6)
    for key in ("logits_real", "logits_fake"):
        assert torch.allclose(d_logs[key], expected_logs[f"train/{key}"], atol=1e-6)
    assert (d_loss != 0) == (step >= 5)
    assert ours.gan_active(step) == (step >= 5)


def test_pixel_weight_is_honoured_and_l2_is_an_option():
    x, y = images(), images()
    for kind, pixel in (("l1", (x - y).abs().mean()), ("l2", (x - y).square().mean())):
        loss = VQGANLoss(VQGANLossConfig(pixelloss_weight=2.5, pixel_loss=kind, perceptual_weight=0.0,
                                         codebook_weight=0.5, disc_start=10, disc_ndf=8))
        total, logs = loss.generator_loss(x, y, torch.tensor(0.2), torch.zeros(1), step=0)
        assert torch.allclose(total, 2.5 * pixel + 0.5 * 0.2) and torch.allclose(logs["pixel_loss"], pixel)


def test_bce_matches_the_original_segmentation_loss():
    target = one_hot_labels(torch.randint(0, 5, (2, 8, 8)), 5)
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    quantizer_loss = torch.tensor(0.3)
    ours = VQGANLoss(VQGANLossConfig(pixel_loss="bce", perceptual_weight=0.0, codebook_weight=0.5,
                                     disc_start=10 ** 6, disc_in_channels=5, disc_ndf=8))
    total, logs = ours.generator_loss(target, logits, quantizer_loss, torch.zeros(1), step=0)
    expected, expected_logs = BCELossWithQuant(codebook_weight=0.5)(quantizer_loss, target, logits, "train")
    assert torch.allclose(total, expected, atol=1e-6)
    assert torch.allclose(logs["pixel_loss"], expected_logs["train/bce_loss"], atol=1e-6)
    grad, = torch.autograd.grad(total, logits)
    assert torch.allclose(grad, torch.autograd.grad(expected, logits)[0], atol=1e-7)


def _discriminator_grad_norm(loss: VQGANLoss, step: int) -> float:
    loss.discriminator.zero_grad(set_to_none=False)
    d_loss, _ = loss.discriminator_loss(images(), images(), step)
    d_loss.backward()
    return sum(p.grad.abs().sum().item() for p in loss.discriminator.parameters())


def test_discriminator_learns_before_disc_start_only_with_warmup():
    plain = VQGANLoss(VQGANLossConfig(disc_start=100, perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2))
    warm = VQGANLoss(VQGANLossConfig(disc_start=100, disc_warmup_steps=60, perceptual_weight=0.0, disc_ndf=8,
                                     disc_num_layers=2))
    assert _discriminator_grad_norm(plain, 50) == 0 and not plain.discriminator_active(50)
    assert _discriminator_grad_norm(warm, 30) == 0 and not warm.discriminator_active(30)
    assert _discriminator_grad_norm(warm, 50) > 0 and warm.discriminator_active(50)
    assert _discriminator_grad_norm(plain, 100) > 0
    # Warm-up trains the discriminator only: the generator still sees no GAN term before disc_start.
    x = images().requires_grad_()
    total, logs = warm.generator_loss(images(), x, torch.tensor(0.0), x, step=50)
    assert logs["g_loss"] == 0 and logs["d_weight"] == 0 and not warm.gan_active(50)


def test_generator_loss_gives_the_discriminator_no_gradient_and_survives_no_grad():
    loss = VQGANLoss(VQGANLossConfig(perceptual_weight=0.0, disc_ndf=8, disc_num_layers=2))
    model, x = TinyAutoencoder(), images()
    total, logs = loss.generator_loss(x, *model(x), model.last_layer, step=0)
    total.backward()
    assert logs["d_weight"] > 0 and model.last_layer.grad is not None
    assert all(p.grad is None and p.requires_grad for p in loss.discriminator.parameters())
    with torch.no_grad():  # evaluation
        total, logs = loss.generator_loss(x, *model(x), model.last_layer, step=0)
    assert logs["d_weight"] == 0 and torch.isfinite(total)


def test_conditional_discriminator_sees_the_condition():
    loss = VQGANLoss(VQGANLossConfig(disc_conditional=True, disc_in_channels=4, perceptual_weight=0.0, disc_ndf=8,
                                     disc_num_layers=2))
    x, cond = images(), torch.rand(2, 1, 16, 16)
    d_loss, _ = loss.discriminator_loss(x, x.flip(0), 0, cond=cond)
    assert torch.isfinite(d_loss)
    seen = []
    wrapper = lambda images: seen.append(images.shape) or loss.discriminator(images)  # noqa: E731 (as DDP would)
    loss.discriminator_loss(x, x.flip(0), 0, cond=cond, discriminator=wrapper)
    assert seen == [(2, 4, 16, 16)] * 2
    with pytest.raises(ValueError, match="disc_conditional"):
        loss.discriminator_loss(x, x.flip(0), 0)


def test_state_dict_holds_the_discriminator_only(ours_lpips):
    config = VQGANLossConfig(use_actnorm=True, disc_ndf=8, disc_num_layers=2)
    loss = VQGANLoss(config, ours_lpips)
    loss.discriminator_loss(images(), images(), 0)  # ActNorm initializes
    state = loss.state_dict()
    assert state and all(k.startswith("discriminator.") for k in state)
    assert state["discriminator.main.3.initialized"] == 1
    again = VQGANLoss(config, ours_lpips)
    again.load_state_dict(state)  # strict: the LPIPS it already has stays
    assert again.perceptual_available and again.discriminator.main[3].initialized == 1


# --- config and finite checks -------------------------------------------------------------------------------------


def test_config_reads_the_original_lossconfig():
    original = yaml.safe_load(open("tests/data/taming/vqgan_imagenet_f16_16384.yaml"))
    params = original["model"]["params"]["lossconfig"]["params"]
    config = from_dict(VQGANLossConfig, params)
    assert (config.disc_weight, config.disc_num_layers, config.disc_start) == (0.75, 2, 0)
    with pytest.raises(ConfigError, match="disc_weigth"):
        from_dict(VQGANLossConfig, {"disc_weigth": 1.0})
    with pytest.raises(ConfigError, match="pixelloss_weight"):
        from_dict(VQGANLossConfig, {"pixelloss_weight": -1})
    with pytest.raises(ConfigError, match="disc_loss"):
        from_dict(VQGANLossConfig, {"disc_loss": "wasserstein"})
    assert VQGANLossConfig(disc_start=100, disc_warmup_steps=150).discriminator_start == 0


def test_check_finite_names_the_bad_value_and_step():
    check_finite({"a": torch.tensor(1.0), "b": 2.0}, step=3)
    check_finite(torch.tensor(0.5), step=3)
    with pytest.raises(NonFiniteLossError, match=r"step 7: .*g_loss=nan"):
        check_finite({"nll_loss": torch.tensor(1.0), "g_loss": torch.tensor(float("nan"))}, step=7)
    with pytest.raises(NonFiniteLossError, match="loss=inf"):
        check_finite(torch.tensor(float("inf")), step=0)
