"""Precision: what ``auto`` picks on each kind of hardware, and codes that bf16 autocast does not change."""

import numpy as np
import pytest
import torch

from tamer import devices
from tamer.config import ConfigError
from tamer.data.procedural import ProceduralShapes
from tamer.devices import resolve_memory_format, resolve_precision
from tamer.guards import InputError
from tamer.nn.autoencoder import AutoencoderConfig
from tamer.nn.quantize import QuantizerConfig
from tamer.vqgan.model import VQGAN, VQGANConfig


@pytest.fixture
def cpu(monkeypatch):
    """Set the CPU this test pretends to run on: its torch capability and its /proc/cpuinfo flags."""
    def pretend(capability: str, flags: set[str]):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: set(flags))
    return pretend


@pytest.mark.parametrize("capability, flags, expected, feature", [
    ("AVX2", {"avx2", "fma"}, "fp32", None),  # the AMD AVX2 machines: bf16 autocast is 6-30x slower there
    ("AVX512", {"avx512f"}, "fp32", None),  # Skylake/Cascade Lake: AVX-512 without bf16
    ("DEFAULT", set(), "fp32", None),
    ("AVX512", {"avx512f", "avx512_bf16"}, "bf16", "AVX512-BF16"),  # Zen 4 reports AVX512 only
    ("AVX512", {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16", "AMX"),  # Sapphire Rapids
    ("AMX", set(), "bf16", "AMX"),  # a torch that names AMX itself, on a system without /proc/cpuinfo
])
def test_auto_on_cpus_picks_bf16_only_where_it_is_fast(cpu, capability, flags, expected, feature):
    cpu(capability, flags)
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == expected
    assert chosen.reason.startswith("auto: ")
    if feature:
        assert str(chosen) == f"bf16 (auto: this CPU has {feature})"
    else:
        assert "no AMX or AVX512-BF16" in chosen.reason and capability in chosen.reason


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_gpus_follows_native_bf16(monkeypatch, supported, expected):
    seen = {}

    def is_bf16_supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    assert resolve_precision("auto", "cuda:0").name == expected
    assert seen["including_emulation"] is False  # emulated bf16 on pre-Ampere GPUs is slow


def test_auto_elsewhere_is_fp32_and_a_forced_precision_is_kept(cpu):
    assert resolve_precision("auto", "mps").name == "fp32"
    cpu("AVX2", set())
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, "cpu").name == name
        assert resolve_precision(name, "cpu").reason == "as asked" and str(resolve_precision(name, "cpu")) == name
    with pytest.raises(InputError, match=r"^precision: expected one of auto, fp32, bf16, fp16, got 'bf61'$"):
        resolve_precision("bf61", "cpu")


def test_the_autocast_of_a_precision(cpu):
    cpu("AVX2", set())
    x = torch.randn(4, 4)
    with devices.autocast("cpu", resolve_precision("auto", "cpu")):
        assert (x @ x).dtype == torch.float32
    with devices.autocast("cpu", resolve_precision("bf16", "cpu")):
        assert (x @ x).dtype == torch.bfloat16


def test_train_precision_auto_is_the_default_round_trips_and_bad_values_name_the_key(tmp_path):
    from tamer.config import from_dict, to_dict
    from tamer.train.config import TrainConfig
    from tamer.train.vqgan_run import load_run_config

    assert TrainConfig().precision == "auto"
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  precision: auto\n  steps: 3\n")
    config = load_run_config(path)
    assert config.train.precision == "auto"
    assert from_dict(TrainConfig, to_dict(config.train)) == config.train
    assert load_run_config(path, ["train.precision=fp32"]).train.precision == "fp32"
    with pytest.raises(ConfigError) as error:
        load_run_config(path, ["train.precision=bf61"])
    message = str(error.value)
    assert "\n" not in message and "train.precision" in message and "'auto'" in message and "bf61" in message


def test_memory_format_auto_is_channels_last_only_for_convolutions_on_a_cpu():
    conv, linear = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 4)
    assert resolve_memory_format("auto", "cpu", [linear, conv]) == torch.channels_last
    assert resolve_memory_format("auto", "cpu", [linear]) == torch.contiguous_format  # a GPT: nothing to change
    assert resolve_memory_format("auto", "cuda", [conv]) == torch.contiguous_format  # not measured there
    assert resolve_memory_format("channels_last", "cuda", [conv]) == torch.channels_last
    assert resolve_memory_format("contiguous", "cpu", [conv]) == torch.contiguous_format
    with pytest.raises(InputError, match=r"^memory_format: expected one of auto, channels_last, contiguous, got "
                                         r"'nhwc'$"):
        resolve_memory_format("nhwc", "cpu", [conv])


def test_the_demo_stays_fp32():
    from types import SimpleNamespace

    from tamer.demo.run import stage_overrides

    plan = SimpleNamespace(data_length=8, val_images=2)
    assert "train.precision=fp32" in stage_overrides(plan, "cpu", 10)  # its published figures are fp32


# -- codes under autocast -------------------------------------------------------------------------------------------
TINY = AutoencoderConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), z_channels=8,
                         resolution=32)
KINDS = {"vq": {}, "vq-ema": {"ema": True}, "vq-cosine": {"l2_normalize": True}, "gumbel": {"kind": "gumbel"},
         "fsq": {"kind": "fsq", "levels": (5, 4, 3), "embed_dim": 3}, "lfq": {"kind": "lfq", "embed_dim": 5},
         "simvq": {"kind": "simvq"}, "residual": {"kind": "residual"}}


def _scenes(count: int = 8) -> torch.Tensor:
    data = ProceduralShapes(size=32, length=count, seed=3)
    return torch.stack([data[i]["image"] for i in range(count)])


@pytest.mark.parametrize("kind", KINDS)
def test_quantizer_codes_are_equal_with_and_without_bf16_autocast(kind, one_thread):
    options = {"num_codes": 32, "embed_dim": 8, **KINDS[kind]}
    model = VQGAN(VQGANConfig(TINY, QuantizerConfig(**options))).eval()
    images = _scenes()
    with torch.no_grad():
        latents = model.encode_latents(images)  # the same latents for both: only the quantizer is compared
        plain = model.quantize(latents)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model.quantize(latents.bfloat16())  # as a bf16 encoder hands them over
            assert mixed.latents.dtype == torch.float32
    # bf16 latents round the input; distances on them in fp32 still pick the codes of the rounded latents
    with torch.no_grad():
        rounded = model.quantize(latents.bfloat16().float())
    assert torch.equal(mixed.indices, rounded.indices)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model.quantize(latents).indices, plain.indices)  # fp32 latents: the very same codes


def test_ema_codebook_updates_are_equal_with_and_without_bf16_autocast(one_thread):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(TINY, QuantizerConfig(num_codes=32, embed_dim=8, ema=True))).train()
    with torch.no_grad():
        latents = model.encode_latents(_scenes())
    twin = VQGAN(VQGANConfig(TINY, QuantizerConfig(num_codes=32, embed_dim=8, ema=True))).train()
    twin.load_state_dict(model.state_dict())
    for step in range(3):
        a = model.quantize(latents)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = twin.quantize(latents)
        assert torch.equal(a.indices, b.indices)
    for (name, mine), theirs in zip(model.quantize.state_dict().items(), twin.quantize.state_dict().values()):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), name


# -- the commands say which precision they chose and record it --------------------------------------------------------
def test_encode_and_reconstruct_commands_print_the_precision(tmp_path, capsys, one_thread):
    from tamer.cli import main
    from tamer.imageio import save_image

    VQGAN(VQGANConfig(TINY, QuantizerConfig(num_codes=32, embed_dim=8))).save(tmp_path / "vqgan")
    images = []
    for i, image in enumerate(_scenes(2)):
        images.append(str(save_image(image, tmp_path / f"scene-{i}.png")))
    model = ["--model", str(tmp_path / "vqgan"), "--device", "cpu"]
    assert main(["encode", *images, *model, "--out", str(tmp_path / "auto.npy")]) == 0
    assert f"precision: {resolve_precision('auto', 'cpu')}\n" in capsys.readouterr().out  # the default, once
    codes = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.npy"
        assert main(["encode", *images, *model, "--precision", precision, "--out", str(out)]) == 0
        assert capsys.readouterr().out.count(f"precision: {precision}\n") == 1
        codes[precision] = np.load(out)
    assert codes["fp32"].shape == codes["bf16"].shape == (2, 8, 8)
    assert main(["reconstruct", *images, *model, "--precision", "bf16", "--out", str(tmp_path / "rec")]) == 0
    assert "precision: bf16\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["encode", *images, *model, "--precision", "bf61", "--out", str(tmp_path / "x.npy")])
    assert "argument --precision: invalid choice: 'bf61'" in capsys.readouterr().err


def test_sample_command_records_the_resolved_precision(class_model, tmp_path, capsys):
    import json

    from tamer.cli import main

    out = tmp_path / "out"
    assert main(["sample", "--model", str(class_model), "--class", "0", "-n", "1", "--top-k", "5", "--device", "cpu",
                 "--out", str(out)]) == 0
    chosen = resolve_precision("auto", "cpu")
    assert f"precision: {chosen}" in capsys.readouterr().out
    assert json.loads((out / "sample.json").read_text())["request"]["precision"] == chosen.name
    assert main(["sample", "--model", str(class_model), "--class", "0", "-n", "1", "--top-k", "5", "--device", "cpu",
                 "--precision", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert json.loads((tmp_path / "bf16" / "sample.json").read_text())["request"]["precision"] == "bf16"


def test_loader_workers_follow_the_cores(monkeypatch, capsys):
    from tamer import devices

    monkeypatch.setattr(devices, "usable_cpus", lambda: 2)
    assert devices.data_loader_workers(8) == (1, "num_workers: 8 asked, 1 used (2 CPUs for 1 training process)")
    assert devices.data_loader_workers(0) == (0, None)
    monkeypatch.setattr(devices, "usable_cpus", lambda: 64)
    assert devices.data_loader_workers(8) == (8, None)
    assert devices.data_loader_workers(8, processes_per_machine=8)[0] == 7  # torchrun: 8 ranks share 64 CPUs


def test_weights_held_in_bf16_for_the_block_and_the_originals_put_back():
    from tamer.ar.sampling import SamplingSettings, sample_tokens
    from tamer.nn.gpt import GPT, GPTConfig, weights_held_in

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    before = {name: p.detach().clone() for name, p in gpt.named_parameters()}
    prefix, seeds = torch.randint(0, 40, (2, 3)), torch.arange(2)
    settings = SamplingSettings(top_k=5)
    fp32_tokens = sample_tokens(gpt, prefix, 10, settings, seeds)
    greedy_settings = SamplingSettings(top_k=1)
    greedy = sample_tokens(gpt, prefix, 10, greedy_settings, seeds)
    with weights_held_in(gpt, torch.bfloat16):
        assert {p.dtype for p in gpt.parameters()} == {torch.bfloat16}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = sample_tokens(gpt, prefix, 10, settings, seeds)  # the fp32 cache is replaced by a bf16 one
        assert gpt.cache.k.dtype == torch.bfloat16
    assert tokens.shape == (2, 10) and int(tokens.max()) < 40
    for name, p in gpt.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name]), name
    # back in fp32 (a new fp32 cache, not the bf16 one, which would round the keys): the same tokens
    assert torch.equal(sample_tokens(gpt, prefix, 10, settings, seeds), fp32_tokens)
    with weights_held_in(gpt, torch.bfloat16):
        sample_tokens(gpt, prefix, 10, greedy_settings, seeds)
    assert gpt.cache.k.dtype == torch.bfloat16
    assert torch.equal(sample_tokens(gpt, prefix, 10, greedy_settings, seeds), greedy)
    assert gpt.cache.k.dtype == torch.float32
    with weights_held_in(gpt, None):
        assert {p.dtype for p in gpt.parameters()} == {torch.float32}


@pytest.mark.skipif(not __import__("tamer.nn.gpt", fromlist=["_"])._can_pack_bf16(), reason="no oneDNN bf16 here")
def test_packed_bf16_products_equal_f_linear_and_leave_no_trace(monkeypatch):
    from tamer.nn import gpt as gpt_module

    monkeypatch.setattr(gpt_module, "SMALL_WEIGHT", 0)  # pack the small test weights too
    torch.manual_seed(0)
    gpt = gpt_module.GPT(gpt_module.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 40, (3, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with gpt_module.weights_held_in(gpt, torch.bfloat16):
            layers = [m for m in gpt.modules() if isinstance(m, torch.nn.Linear)]
            assert all(hasattr(m, "packed_weight") for m in layers)
            assert all(hasattr(block.attn, "packed_qkv") for block in gpt.blocks)  # q, k, v as one product
            outer = [m.packed_weight for m in layers]
            with gpt_module.weights_held_in(gpt, torch.bfloat16):  # nested (a batch inside a loop): nothing redone
                assert all(m.packed_weight is w for m, w in zip(layers, outer))
            assert all(m.packed_weight is w for m, w in zip(layers, outer))  # and the outer packing is kept
            gpt.setup_cache(3, 9)
            packed = torch.stack([gpt.prefill(idx[:, :5])] + [gpt.decode_one(idx[:, t], t) for t in range(5, 9)])
            monkeypatch.setattr(gpt_module, "SMALL_ROWS", 0)  # the same weights through F.linear
            plain = torch.stack([gpt.prefill(idx[:, :5])] + [gpt.decode_one(idx[:, t], t) for t in range(5, 9)])
    torch.testing.assert_close(packed.float(), plain.float(), atol=2e-2, rtol=2e-2)
    assert not any(hasattr(m, "packed_weight") or hasattr(m, "packed_qkv") for m in gpt.modules())
