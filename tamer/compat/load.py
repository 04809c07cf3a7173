"""An original CompVis checkpoint (``.ckpt`` + ``project.yaml``) as a tamer model: the yaml's ``model.target``
picks the importer, :mod:`tamer.compat.taming` for the VQGAN classes and :mod:`tamer.compat.taming_transformer` for
``Net2NetTransformer``."""

from __future__ import annotations

from pathlib import Path

import torch

from tamer.compat.taming import VQ_TARGETS, find_project_yaml, load_taming_vqgan, read_taming_checkpoint
from tamer.compat.taming_transformer import NET2NET_TARGET, load_net2net
from tamer.config import read_yaml
from tamer.errors import CheckpointError, ConfigError


def load_taming_checkpoint(path: str | Path, config: str | Path | None = None,
                           map_location: str | torch.device = "cpu",
                           code_shape: tuple[int, int] | None = None) -> torch.nn.Module:
    """A CompVis checkpoint as a tamer model (weights checked key by key): a :class:`VQGAN` for the VQGAN
    classes, a :class:`~tamer.Transformer` for ``Net2NetTransformer``.

    ``code_shape`` (transformers only): the code grid the model was trained on, which the project.yaml does not
    store; when not given it is read from the permuter, else inferred from ``block_size`` with a warning (see
    :mod:`tamer.compat.taming_transformer`).
    """
    path = Path(path)
    if config is None:
        config = find_project_yaml(path)
        if config is None:
            raise CheckpointError(f"{path}: no project.yaml found beside it; pass config=PATH (--config on the CLI)")
    document = read_yaml(config)
    if "model" not in document:
        raise ConfigError(f"{config}: no 'model' section (is this a taming project.yaml?)")
    state = read_taming_checkpoint(path)
    target = document["model"].get("target")
    if target == NET2NET_TARGET:
        return load_net2net(document, state, str(path), str(config), code_shape).to(map_location).eval()
    if code_shape is not None:
        raise ConfigError(f"code_shape: only a transformer checkpoint takes it; {config} describes a {target!r}")
    if target in VQ_TARGETS:
        return load_taming_vqgan(document, state, str(path)).to(map_location).eval()
    raise ConfigError(f"{config}: model.target {target!r} cannot be imported; supported: "
                      f"{', '.join([*VQ_TARGETS, NET2NET_TARGET])}")
