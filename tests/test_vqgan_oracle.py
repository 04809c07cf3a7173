"""Same weights in, same numbers out: tamer's VQGAN against the original CompVis modules."""

import pytest
import torch
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from oracle import load_part, original_autoencoder, quiet
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig, build_quantizer
from tamer.vqgan.model import VQGAN, VQGANConfig

# The architectures of the released models (only the input size is reduced to keep the test quick).
F16_IMAGENET = AutoencoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                                 z_channels=256, resolution=256)
GUMBEL_F8 = AutoencoderConfig(ch=128, ch_mult=(1, 1, 2, 4), num_res_blocks=2, attn_resolutions=(32,),
                              z_channels=256, resolution=256)
DEPTH_F16 = AutoencoderConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                              z_channels=256, resolution=256, in_channels=1, out_ch=1)


def spread_codebook(model: VQGAN, images: torch.Tensor) -> None:
    """Replace the tiny-uniform initial codebook by codes near real latents, so that many codes get used."""
    with torch.no_grad():
        latents = model.encode_latents(images).permute(0, 2, 3, 1).reshape(-1, model.config.quantizer.embed_dim)
        codebook = model.quantize.codebook()
        picks = latents[torch.randint(0, latents.shape[0], (codebook.shape[0],))]
        codebook.copy_(picks + 0.5 * latents.std() * torch.randn_like(picks))


@pytest.mark.parametrize("autoencoder", [F16_IMAGENET, DEPTH_F16], ids=["f16-imagenet", "f16-depth-1ch"])
def test_vq_model_matches_original(autoencoder):
    model = VQGAN(VQGANConfig(autoencoder, QuantizerConfig(num_codes=1024, embed_dim=256, legacy_loss=True))).eval()
    images = torch.rand(2, autoencoder.in_channels, 64, 96) * 2 - 1  # not square, any multiple of 16 works
    spread_codebook(model, images)
    encoder, decoder = original_autoencoder(autoencoder)
    load_part(encoder, model.state_dict(), "encoder.")
    load_part(decoder, model.state_dict(), "decoder.")
    quantizer = quiet(VectorQuantizer2, 1024, 256, beta=0.25)
    quantizer.embedding.weight.data.copy_(model.quantize.embedding.weight)

    with torch.no_grad():
        z_q, loss, (_, _, indices) = quantizer(model.quant_conv(encoder(images)))
        expected = decoder(model.post_quant_conv(z_q))
        ours = model(images)
        decoded = model.decode(ours.indices)

    assert ours.indices.shape == (2, 4, 6)
    assert torch.equal(ours.indices.flatten(), indices.flatten())
    assert ours.indices.unique().numel() > 10  # the comparison means something
    assert (ours.reconstruction - expected).abs().max() < 1e-4
    assert (decoded - expected).abs().max() < 1e-4
    assert torch.allclose(ours.quantizer_loss, loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("legacy", [True, False])
def test_vector_quantizer_loss_matches_original(legacy):
    ours = VQGAN(VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2), z_channels=8, resolution=32,
                                               attn_resolutions=()),
                             QuantizerConfig(num_codes=64, embed_dim=8, beta=0.25, legacy_loss=legacy))).quantize
    original = quiet(VectorQuantizer2, 64, 8, beta=0.25, legacy=legacy)
    torch.nn.init.normal_(ours.embedding.weight)
    original.embedding.weight.data.copy_(ours.embedding.weight)
    z = torch.randn(3, 8, 5, 7, requires_grad=True)
    z_orig = z.detach().clone().requires_grad_(True)

    result = ours(z)
    z_q, loss, (_, _, indices) = original(z_orig)
    assert torch.equal(result.indices.flatten(), indices.flatten())
    assert torch.allclose(result.loss, loss)
    # The weighting shows in the gradients: codebook and encoder receive the same gradients as the original's.
    (result.loss + result.latents.sum()).backward()
    (loss + z_q.sum()).backward()
    assert torch.allclose(z.grad, z_orig.grad, atol=1e-6)
    assert torch.allclose(ours.embedding.weight.grad, original.embedding.weight.grad, atol=1e-6)


def test_legacy_flag_swaps_the_weights():
    config = dict(num_codes=16, embed_dim=4, beta=0.25)
    z = torch.randn(2, 4, 3, 3)
    fixed = build_quantizer(QuantizerConfig(**config, legacy_loss=False))
    legacy = build_quantizer(QuantizerConfig(**config, legacy_loss=True))
    legacy.load_state_dict(fixed.state_dict())
    # Both terms have the same value in the forward pass, so the totals agree; only where the gradient goes differs.
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    fixed(z1).loss.backward()
    legacy(z2).loss.backward()
    assert torch.allclose(z2.grad, z1.grad / 0.25)  # commitment weight 1 (legacy) instead of beta
    assert torch.allclose(legacy.embedding.weight.grad, fixed.embedding.weight.grad * 0.25)


def test_gumbel_f8_matches_original_argmax():
    config = VQGANConfig(GUMBEL_F8, QuantizerConfig(kind="gumbel", num_codes=8192, embed_dim=256, kl_weight=1e-8))
    model = VQGAN(config).eval()
    encoder, decoder = original_autoencoder(GUMBEL_F8)
    load_part(encoder, model.state_dict(), "encoder.")
    load_part(decoder, model.state_dict(), "decoder.")
    quantizer = GumbelQuantize(256, 256, n_embed=8192, kl_weight=1e-8, temp_init=1.0).eval()
    load_part(quantizer, model.state_dict(), "quantize.")
    images = torch.rand(2, 3, 64, 64) * 2 - 1

    with torch.no_grad():
        _, kl, _, logits = quantizer(model.quant_conv(encoder(images)), return_logits=True)
        expected_indices = logits.argmax(1)
        expected = decoder(model.post_quant_conv(
            quantizer.get_codebook_entry(expected_indices.flatten(), (2, 8, 8, 256))))
        ours = model(images)
        again = model(images)

    assert torch.equal(ours.indices, expected_indices)
    assert torch.equal(again.indices, ours.indices)  # deterministic in eval
    assert ours.indices.unique().numel() > 10
    assert (ours.reconstruction - expected).abs().max() < 1e-4
    assert (model.decode(ours.indices) - expected).abs().max() < 1e-4
    assert torch.allclose(ours.quantizer_loss, kl, rtol=1e-5)


def test_gumbel_stochastic_eval_is_optional():
    config = QuantizerConfig(kind="gumbel", num_codes=32, embed_dim=8, stochastic_eval=True)
    quantizer = build_quantizer(config).eval()
    z = torch.randn(4, 8, 6, 6)
    draws = {tuple(quantizer(z).indices.flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1  # the original's sampling in eval, on request
