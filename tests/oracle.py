"""The original CompVis modules (PyPI ``taming-transformers-rom1504``, installed with --no-deps) as a test oracle."""

import contextlib
import io

import torch

from tamer.nn.autoencoder import AutoencoderConfig


def quiet(fn, *args, **kwargs):
    """Build an original module without its prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def original_autoencoder(config: AutoencoderConfig):
    from taming.modules.diffusionmodules.model import Decoder, Encoder

    ddconfig = {k: getattr(config, k) for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout",
                                               "in_channels", "out_ch", "resolution", "z_channels", "double_z")}
    return quiet(Encoder, **ddconfig).eval(), quiet(Decoder, **ddconfig).eval()


def load_part(module: torch.nn.Module, state: dict, prefix: str) -> None:
    """Load the entries of ``state`` under ``prefix`` into ``module``, every key required."""
    module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
