"""tamer: Taming Transformers (VQGAN + autoregressive transformer) in modern PyTorch."""

__version__ = "0.1.0"

from .checkpoints import CheckpointError, load  # noqa: E402
from .config import ConfigError  # noqa: E402
from .sampling import SamplingSettings  # noqa: E402
from .transformer import Transformer, TransformerConfig  # noqa: E402
from .vqgan import VQGAN, VQGANConfig  # noqa: E402

__all__ = ["VQGAN", "VQGANConfig", "Transformer", "TransformerConfig", "SamplingSettings", "load", "CheckpointError",
           "ConfigError", "__version__"]
