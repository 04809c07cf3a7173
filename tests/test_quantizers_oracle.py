"""FSQ, LFQ/BSQ, SimVQ, residual VQ and the rotation trick against vector-quantize-pytorch on the same inputs."""

import pytest
import torch
from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, SimVQ
from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to as oracle_rotate_to

from tamer.nn.quantize import QuantizerConfig, build_quantizer
from tamer.nn.quantize.rotation import rotate_to


def latents(dim: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, dim, 5, 6, generator=torch.Generator().manual_seed(seed)) * scale


def as_sequence(z: torch.Tensor) -> torch.Tensor:
    """B×D×h×w -> B×(h·w)×D, the layout vector-quantize-pytorch takes without ``channel_first``."""
    return z.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("levels", [(8, 6, 5), (7, 5, 5, 5), (4, 4, 3)])
def test_fsq_codes_and_outputs_equal_the_oracle(levels):
    z = latents(len(levels), scale=2.0)
    oracle = FSQ(list(levels))
    expected, expected_indices = oracle(z)
    ours = build_quantizer(QuantizerConfig(kind="fsq", levels=levels, embed_dim=len(levels)))
    out = ours(z)
    assert ours.config.vocab_size == oracle.codebook_size
    assert torch.equal(out.indices, expected_indices.long())
    assert torch.equal(out.latents, expected)
    assert torch.equal(ours.dequantize(out.indices), oracle.indices_to_codes(expected_indices))
    assert torch.equal(ours.codebook(), oracle.implicit_codebook)  # every code, in index order


@pytest.mark.parametrize("spherical", [False, True], ids=["lfq", "bsq"])
def test_lfq_codes_and_entropy_loss_match_the_oracle(spherical):
    z = latents(8, seed=1)
    oracle = LFQ(dim=8, codebook_size=256, entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=1.0,
                 spherical=spherical, channel_first=True).train()
    (expected, expected_indices, expected_loss), breakdown = oracle(z, return_loss_breakdown=True)
    ours = build_quantizer(QuantizerConfig(kind="lfq", embed_dim=8, beta=0.25, entropy_weight=0.1,
                                           diversity_gamma=1.0, spherical=spherical)).train()
    out = ours(z)
    assert ours.config.vocab_size == 256
    assert torch.equal(out.indices, expected_indices.long())
    assert torch.allclose(out.latents, expected, atol=1e-7)
    assert abs(out.loss.item() - expected_loss.item()) < 1e-5
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    flat = torch.nn.functional.normalize(flat, dim=-1) if spherical else flat
    ours_entropy = ours.entropy_loss(flat)
    oracle_entropy = breakdown.per_sample_entropy - breakdown.batch_entropy
    assert abs(ours_entropy.item() - oracle_entropy.item()) < 1e-5
    assert torch.allclose(ours.dequantize(out.indices), oracle.indices_to_codes(expected_indices), atol=1e-7)


@pytest.mark.parametrize("rotation_trick", [False, True])
def test_simvq_codes_loss_and_gradients_match_the_oracle(rotation_trick):
    torch.manual_seed(2)
    oracle = SimVQ(dim=8, codebook_size=64, channel_first=True, rotation_trick=rotation_trick)
    ours = build_quantizer(QuantizerConfig(kind="simvq", num_codes=64, embed_dim=8, beta=0.25,
                                           rotation_trick=rotation_trick))
    ours.frozen_codebook.copy_(oracle.frozen_codebook)
    ours.code_transform.weight.data.copy_(oracle.code_transform.weight)
    z = latents(8, seed=2)
    upstream = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))

    def run(module):
        x = z.clone().requires_grad_(True)
        if module is oracle:
            quantized, indices, loss = oracle(x)
        else:
            out = ours(x)
            quantized, indices, loss = out.latents, out.indices, out.loss
        ((quantized * upstream).sum() + loss).backward()
        return quantized.detach(), indices, loss.detach(), x.grad, module.code_transform.weight.grad

    results = [run(oracle), run(ours)]
    (q0, i0, l0, gx0, gw0), (q1, i1, l1, gx1, gw1) = results
    assert torch.equal(i1, i0)
    assert torch.allclose(q1, q0, atol=1e-6)
    assert abs(l1.item() - l0.item()) < 1e-6
    assert torch.allclose(gx1, gx0, atol=1e-5)
    assert torch.allclose(gw1, gw0, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("shared", [False, True], ids=["separate", "shared"])
def test_residual_codes_equal_the_oracle(depth, shared):
    torch.manual_seed(4)
    oracle = ResidualVQ(dim=8, num_quantizers=depth, codebook_size=32, shared_codebook=shared).eval()
    ours = build_quantizer(QuantizerConfig(kind="residual", num_codes=32, embed_dim=8, depth=depth,
                                           shared_codebook=shared)).eval()
    for k in range(1 if shared else depth):
        ours.layers[k].embedding.weight.data.copy_(oracle.layers[k]._codebook.embed[0])
    z = latents(8, seed=4)
    expected, expected_indices, _ = oracle(as_sequence(z))
    out = ours(z)
    b, _, h, w = z.shape
    assert out.indices.shape == (b, h, w * depth)  # each position's codes side by side, coarse to fine
    assert torch.equal(out.indices.view(b, h * w, depth), expected_indices)
    assert torch.allclose(as_sequence(out.latents), expected, atol=1e-5)
    assert torch.allclose(ours.dequantize(out.indices), out.latents, atol=1e-6)
    if depth > 1:  # the later depths do refine: the residual error shrinks
        first = ours.layers[0].embedding.weight[out.indices.view(b, h, w, depth)[..., 0]].permute(0, 3, 1, 2)
        assert (z - out.latents).pow(2).mean() < (z - first).pow(2).mean()


def test_rotation_trick_gradients_match_the_oracle():
    generator = torch.Generator().manual_seed(5)
    z = torch.randn(50, 16, generator=generator)
    codes = torch.randn(50, 16, generator=generator) * 0.7
    upstream = torch.randn(50, 16, generator=generator)
    grads, values = [], []
    for fn in (oracle_rotate_to, rotate_to):
        x, target = z.clone().requires_grad_(True), codes.clone().requires_grad_(True)
        out = fn(x, target)
        (out * upstream).sum().backward()
        grads.append(x.grad)
        values.append(out.detach())
        assert target.grad is None or not target.grad.any()  # the code learns from its loss, not through here
    assert torch.allclose(values[1], codes, atol=1e-5)  # the value is the code's
    assert torch.allclose(values[1], values[0], atol=1e-6)
    assert (grads[1] - grads[0]).abs().max() < 1e-5
    assert not torch.allclose(grads[1], upstream, atol=1e-3)  # not the straight-through gradient


def test_vq_with_rotation_trick_matches_the_oracle_rotation_of_its_codes():
    quantizer = build_quantizer(QuantizerConfig(num_codes=32, embed_dim=8, rotation_trick=True)).eval()
    with torch.no_grad():
        quantizer.embedding.weight.normal_()
    z = latents(8, seed=6).requires_grad_(True)
    upstream = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    out = quantizer(z)
    (out.latents * upstream).sum().backward()

    x = z.detach().clone().requires_grad_(True)
    chosen = quantizer.embedding.weight.detach()[out.indices]  # B×h×w×D
    expected = oracle_rotate_to(x.permute(0, 2, 3, 1), chosen).permute(0, 3, 1, 2)
    (expected * upstream).sum().backward()
    assert torch.allclose(out.latents, expected, atol=1e-6)
    assert (z.grad - x.grad).abs().max() < 1e-5
