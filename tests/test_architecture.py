"""The house's rules, checked: no import cycles, data flows one way (docs/ARCHITECTURE.md), every module imports
alone, and the checkpoint format finds its models without importing them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tamer"

#: who may not import whom: a module under the first prefix never imports one under any of the second
FORBIDDEN = {
    "tamer.errors": ("tamer",),
    "tamer.version": ("tamer",),
    "tamer.atomic": ("tamer",),
    "tamer.progress": ("tamer",),
    "tamer.config": ("tamer.nn", "tamer.vqgan", "tamer.ar", "tamer.checkpoints", "tamer.loading", "tamer.train"),
    "tamer.checkpoints": ("tamer.nn", "tamer.vqgan", "tamer.ar", "tamer.compat", "tamer.loading", "tamer.metrics",
                          "tamer.data", "tamer.train", "tamer.cli", "tamer.app", "tamer.demo", "tamer.api"),
    "tamer.nn": ("tamer.vqgan", "tamer.ar", "tamer.compat", "tamer.loading", "tamer.data", "tamer.metrics",
                 "tamer.train", "tamer.cli", "tamer.app", "tamer.demo", "tamer.api"),
    "tamer.vqgan": ("tamer.ar", "tamer.compat", "tamer.loading", "tamer.data", "tamer.metrics", "tamer.train",
                    "tamer.cli", "tamer.app", "tamer.demo", "tamer.api"),
    "tamer.ar": ("tamer.compat", "tamer.loading", "tamer.train", "tamer.cli", "tamer.app", "tamer.demo", "tamer.api"),
    "tamer.data": ("tamer.vqgan", "tamer.ar", "tamer.loading", "tamer.train", "tamer.cli", "tamer.app", "tamer.demo"),
    "tamer.metrics": ("tamer.train", "tamer.cli", "tamer.app", "tamer.demo"),
    "tamer.train": ("tamer.cli", "tamer.app", "tamer.demo"),
    "tamer.api": ("tamer.cli", "tamer.app", "tamer.demo"),
    "tamer.app": ("tamer.cli", "tamer.demo"),
    "tamer.demo": ("tamer.cli",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__main__.py"}


def imported_modules(name: str) -> set[str]:
    """Every tamer module ``name`` imports, at module level or inside a function (relative or absolute)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from tamer.ar import model` imports the module tamer.ar.model
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def test_the_package_has_no_import_cycle():
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_data_flows_one_way():
    breaches = [f"{name} imports {target}" for name, targets in GRAPH.items() for target in targets
                for low, banned in FORBIDDEN.items()
                if (name == low or name.startswith(low + ".")) and any(
                    target == b or target.startswith(b + ".") for b in banned)
                and not (target == low or target.startswith(low + "."))]
    assert not breaches, "\n".join(sorted(breaches))


def test_the_graph_sees_real_imports():
    # The rules above are only as good as the parser: spot-check edges that must be there.
    assert "tamer.checkpoints" in GRAPH["tamer.vqgan.model"]
    assert "tamer.ar.sampling" in GRAPH["tamer.ar.model"]
    assert "tamer.train.resume" in GRAPH["tamer.train.trainer"]  # `from tamer.train import resume as ckpt`
    assert {"tamer.vqgan.model", "tamer.ar.model"} <= GRAPH["tamer.loading"]


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh module table, so no import order hides a cycle or a missing import."""
    script = "\n".join([
        "import importlib, sys, torch",
        "failed = []",
        f"for name in {sorted(MODULES)!r}:",
        "    for loaded in [m for m in sys.modules if m == 'tamer' or m.startswith('tamer.')]:",
        "        del sys.modules[loaded]",
        "    try:",
        "        importlib.import_module(name)",
        "    except ModuleNotFoundError as error:",
        "        if not (error.name or '').startswith('tamer'):",  # an optional extra (gradio) that is not installed
        "            continue",
        "        failed.append(f'{name}: {error!r}')",
        "    except Exception as error:",
        "        failed.append(f'{name}: {error!r}')",
        "print('\\n'.join(failed))",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", result.stdout


def test_a_model_class_registers_itself_with_the_checkpoint_format(tmp_path):
    """The format imports no model: a Pretrained subclass enters itself, and tamer.load then reads its folders."""
    from dataclasses import dataclass

    import torch

    import tamer
    from tamer.checkpoints import MODEL_CLASSES, Pretrained

    assert {"vqgan", "transformer", "shape_classifier", "shape_segmenter"} <= set(MODEL_CLASSES)

    @dataclass
    class ScaleConfig:
        width: int = 3

    class Scale(Pretrained, torch.nn.Module):
        model_type = "test_scale"
        config_class = ScaleConfig

        def __init__(self, config: ScaleConfig):
            super().__init__()
            self.config = config
            self.weight = torch.nn.Parameter(torch.randn(config.width))

    try:
        saved = Scale(ScaleConfig(width=5))
        saved.save(tmp_path / "scale")
        loaded = tamer.load(tmp_path / "scale")
        assert type(loaded) is Scale and torch.equal(loaded.weight, saved.weight)
    finally:
        MODEL_CLASSES.pop("test_scale", None)


@pytest.mark.parametrize("model", ["vqgan", "transformer"])
def test_from_pretrained_names_what_a_folder_holds(tmp_path, model):
    import tamer
    from tamer.errors import CheckpointError
    from tamer.nn.autoencoder import AutoencoderConfig
    from tamer.nn.quantize import QuantizerConfig

    vqgan = tamer.VQGAN(tamer.VQGANConfig(AutoencoderConfig(ch=8, ch_mult=(1,), num_res_blocks=0, resolution=8,
                                                            z_channels=4, attn_resolutions=(), norm_groups=0),
                                          QuantizerConfig(num_codes=8, embed_dim=4)))
    vqgan.save(tmp_path / "vq")
    if model == "vqgan":
        assert isinstance(tamer.VQGAN.from_pretrained(tmp_path / "vq"), tamer.VQGAN)
    else:
        with pytest.raises(CheckpointError, match="holds a vqgan, not a transformer"):
            tamer.Transformer.from_pretrained(tmp_path / "vq")
