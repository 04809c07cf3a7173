"""Preset YAML files by name: ``vqgan_tiny_cpu`` finds ``configs/vqgan_tiny_cpu.yaml`` shipped with tamer."""

from __future__ import annotations

from pathlib import Path

from tamer.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name_or_path: str | Path) -> Path:
    """A path as given when it exists, else the shipped preset of that name (``vqgan_tiny_cpu``,
    ``vqgan_tiny_cpu.yaml`` or ``configs/vqgan_tiny_cpu.yaml`` from any folder)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PRESET_DIR / f"{path.stem}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"--config: {name_or_path} is neither a file nor a shipped preset; presets: "
                      f"{', '.join(available_presets())}")
