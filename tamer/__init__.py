"""tamer: Taming Transformers (VQGAN + autoregressive transformer) in modern PyTorch.

The two stages are packages: :mod:`tamer.vqgan` (the image tokenizer) and :mod:`tamer.ar` (the transformer over
its codes); :func:`load` reads either from a native folder or an original CompVis checkpoint.
"""

from tamer.ar import SamplingSettings, Transformer, TransformerConfig
from tamer.errors import CheckpointError, ConfigError
from tamer.loading import load
from tamer.version import __version__
from tamer.vqgan import VQGAN, VQGANConfig

__all__ = ["VQGAN", "VQGANConfig", "Transformer", "TransformerConfig", "SamplingSettings", "load", "CheckpointError",
           "ConfigError", "__version__"]
