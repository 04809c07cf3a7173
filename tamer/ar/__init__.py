"""Stage 2, the autoregressive transformer over code indices: the model, its conditions, token orders, the
sampler, sliding-window sampling beyond the training size, and sampling to files."""

from tamer.ar.model import Transformer, TransformerConfig
from tamer.ar.sampling import SamplingSettings

__all__ = ["Transformer", "TransformerConfig", "SamplingSettings"]
