"""The VQGAN API, its quantizer options and native checkpoints."""

import json

import pytest
import torch

import tamer
from tamer.checkpoints import CheckpointError
from tamer.config import ConfigError, from_dict, to_dict
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig, build_quantizer
from tamer.vqgan.model import VQGAN, VQGANConfig

TINY = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
                         resolution=32)


def tiny_vqgan(**quantizer) -> VQGAN:
    return VQGAN(VQGANConfig(TINY, QuantizerConfig(num_codes=32, embed_dim=8, **quantizer))).eval()


def test_encode_decode_agree_with_forward():
    model = tiny_vqgan()
    images = torch.rand(2, 3, 24, 40) * 2 - 1
    with torch.no_grad():
        out = model(images)
        indices = model.encode(images)
        decoded = model.decode(indices)
    assert indices.shape == (2, 6, 10) and indices.dtype == torch.long
    assert torch.equal(indices, out.indices)
    assert torch.allclose(decoded, out.reconstruction, atol=1e-5)
    assert torch.allclose(model.dequantize(indices), model.quantize(model.encode_latents(images)).latents, atol=1e-6)


def test_bad_shapes_are_named():
    model = tiny_vqgan()
    with pytest.raises(ValueError, match="not a multiple of the downsampling factor 4"):
        model.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expected shape B×3×H×W, got \(1, 1, 32, 32\)"):
        model.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"values must lie in \[0, 32\)"):
        model.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(ValueError, match="B×h×w"):
        model.decode(torch.zeros(4, dtype=torch.long))


def test_native_checkpoint_round_trip(tmp_path):
    model = tiny_vqgan(l2_normalize=True, beta=0.5)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["model_type"] == "vqgan" and document["config"]["quantizer"]["beta"] == 0.5

    for source in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):
        loaded = tamer.load(source)
        assert loaded.config == model.config
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert isinstance(VQGAN.from_pretrained(tmp_path / "m"), VQGAN)
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), model.encode(images))


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        tamer.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        tamer.load(tmp_path / "empty")
    tiny_vqgan().save(tmp_path / "m")
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    document["config"]["quantizer"]["num_code"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"config\.quantizer\.num_code: unknown key \(did you mean 'num_codes'\?\)"):
        tamer.load(tmp_path / "m")


def test_config_validation_names_key_and_value():
    with pytest.raises(ConfigError, match=r"autoencoder\.ch_mult\[1\]: expected an integer, got 'two'"):
        from_dict(VQGANConfig, {"autoencoder": {"ch_mult": [1, "two"]}})
    with pytest.raises(ConfigError, match=r"quantizer\.kind: expected one of 'vq', 'gumbel', 'fsq', 'lfq', 'simvq', "
                                          r"'residual', got 'bsq'"):
        from_dict(VQGANConfig, {"quantizer": {"kind": "bsq"}})
    config = VQGANConfig(TINY, QuantizerConfig(num_codes=7))
    assert from_dict(VQGANConfig, to_dict(config)) == config


@pytest.mark.parametrize("ema", [True, False])
def test_codebook_learns_the_clusters_with_dead_code_restarts(ema):
    torch.manual_seed(0)
    centres = torch.randn(8, 4) * 3
    quantizer = build_quantizer(QuantizerConfig(num_codes=16, embed_dim=4, ema=ema, ema_decay=0.8,
                                                dead_code_threshold=5)).train()
    optimizer = None if ema else torch.optim.Adam(quantizer.parameters(), lr=0.05)
    with torch.no_grad():  # start from codes unrelated to the data
        quantizer.embedding.weight.copy_(torch.randn(16, 4))

    def batch():
        points = centres[torch.randint(0, 8, (256,))] + 0.05 * torch.randn(256, 4)
        return points.T.reshape(1, 4, 16, 16)

    before = quantizer.eval()(batch()).loss.item()
    quantizer.train()
    for _ in range(200):
        loss = quantizer(batch()).loss
        if optimizer:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    quantizer.eval()
    after = quantizer(batch())
    assert quantizer.embedding.weight.requires_grad is not ema  # EMA learns by averages, not gradients
    assert after.loss.item() < 0.01 * before
    assert after.indices.unique().numel() >= 8
    # Every cluster centre has a code on it.
    error = (centres[:, None] - quantizer.embedding.weight[None]).norm(dim=-1).min(dim=1).values
    assert (error < 0.3).all()


def test_l2_normalized_codebook_uses_cosine_distance():
    quantizer = build_quantizer(QuantizerConfig(num_codes=16, embed_dim=4, l2_normalize=True))
    z = torch.randn(2, 4, 3, 3)
    out = quantizer(z)
    assert torch.allclose(out.latents.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    assert torch.equal(quantizer(z * 7.0).indices, out.indices)  # scale does not change the code
    cos = torch.einsum("bdhw,nd->bnhw", torch.nn.functional.normalize(z, dim=1), quantizer.codebook())
    assert torch.equal(out.indices, cos.argmax(1))


@pytest.mark.parametrize("kind", ["vq", "gumbel"])
def test_remapped_indices_round_trip(kind):
    quantizer = build_quantizer(QuantizerConfig(kind=kind, num_codes=16, embed_dim=4, remap_size=5,
                                                unknown_index="extra")).eval()
    used = torch.tensor([3, 9, 1, 14, 6])
    quantizer.used.copy_(used)
    if kind == "vq":
        with torch.no_grad():
            quantizer.embedding.weight.normal_()
        z = quantizer.embedding.weight[used[torch.randint(0, 5, (2 * 3 * 3,))]].T.reshape(4, 2, 3, 3).transpose(0, 1)
    else:
        z = torch.randn(2, 4, 3, 3)
    out = quantizer(z)
    assert out.indices.max() < 5  # public indices are positions in `used`
    assert torch.allclose(quantizer.dequantize(out.indices), out.latents, atol=1e-6)
    assert quantizer.config.vocab_size == 6  # five used codes and the extra unknown token


def test_segmentation_colorize_buffer():
    model = VQGAN(VQGANConfig(AutoencoderConfig(ch=32, ch_mult=(1, 2), z_channels=8, resolution=16, in_channels=5,
                                                out_ch=5, attn_resolutions=()),
                              QuantizerConfig(num_codes=8, embed_dim=8), colorize_nlabels=5))
    assert model.to_rgb(torch.randn(2, 5, 8, 8)).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="colorize"):
        tiny_vqgan().to_rgb(torch.randn(1, 5, 8, 8))


def test_kmeans_initialisation_puts_codes_on_the_clusters():
    torch.manual_seed(0)
    centres = torch.randn(6, 4) * 3
    points = centres[torch.arange(600) % 6] + 0.05 * torch.randn(600, 4)
    z = points.T.reshape(1, 4, 20, 30)
    quantizer = build_quantizer(QuantizerConfig(num_codes=12, embed_dim=4, kmeans_init=True, kmeans_iters=20))
    before = quantizer.eval()(z).loss.item()
    quantizer.train()(z)
    assert bool(quantizer.initialized)
    error = (centres[:, None] - quantizer.embedding.weight[None]).norm(dim=-1).min(dim=1).values
    assert (error < 0.1).all()
    assert quantizer.eval()(z).loss.item() < 0.01 * before
    frozen = quantizer.embedding.weight.clone()
    quantizer.train()(z * 2)  # only the first training batch initialises
    assert torch.equal(quantizer.embedding.weight, frozen)


def test_weight_init_lecun_keeps_the_signal_of_a_network_without_normalisation():
    from torch import nn

    from tamer.nn.autoencoder import Encoder

    small = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), z_channels=16, resolution=32,
                 norm_groups=0)
    torch.manual_seed(0)
    default, lecun = Encoder(AutoencoderConfig(**small)), Encoder(AutoencoderConfig(**small, weight_init="lecun"))
    convs = [m for m in lecun.modules() if isinstance(m, nn.Conv2d)]
    assert all(not m.bias.any() for m in convs)
    fan_in = convs[1].weight[0].numel()
    assert convs[1].weight.std().item() == pytest.approx(fan_in ** -0.5, rel=0.05)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        # PyTorch's default draw shrinks the signal layer by layer; N(0, 1/fan_in) keeps it near the input's scale.
        assert default(images).std() < 0.1 < lecun(images).std()
    with pytest.raises(ValueError, match="weight_init"):
        AutoencoderConfig(**small, weight_init="xavier")


def test_norm_groups_sets_the_normalisation_and_defaults_to_the_original():
    from torch import nn

    from tamer.nn.autoencoder import Decoder, Encoder

    def groups(module):
        return {m.num_groups for m in module.modules() if isinstance(m, nn.GroupNorm)}

    small = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, resolution=16)
    assert groups(Encoder(AutoencoderConfig(**small))) == {32}  # the original's GroupNorm(32)
    assert groups(Decoder(AutoencoderConfig(**small, norm_groups=8))) == {8}
    plain = AutoencoderConfig(**small, norm_groups=0)
    encoder, decoder = Encoder(plain), Decoder(plain)
    assert groups(encoder) == set() and groups(decoder) == set()
    assert decoder(encoder(torch.randn(2, 3, 16, 16))).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderConfig(**{**small, "ch": 48})  # 48 channels cannot form 32 groups
    with pytest.raises(ValueError, match="norm_groups"):
        AutoencoderConfig(**small, norm_groups=-1)
