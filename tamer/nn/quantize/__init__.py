"""Quantizers behind one interface (:mod:`.base`), one file per family:

- :mod:`.vq`: nearest-neighbour codebook (VQ-VAE / VQGAN) with EMA, k-means start, dead-code restarts, l2-normalised
  codes, index remapping and the rotation trick (:mod:`.rotation`) as options;
- :mod:`.gumbel`: the original's Gumbel-softmax quantizer;
- :mod:`.fsq`: finite scalar quantization; :mod:`.lfq`: lookup-free quantization and BSQ (``spherical``);
- :mod:`.simvq`: a frozen codebook through a learned linear map; :mod:`.residual`: several codes per position.
"""

from tamer.nn.quantize.base import KINDS, Quantized, Quantizer, QuantizerConfig
from tamer.nn.quantize.fsq import FiniteScalarQuantizer
from tamer.nn.quantize.gumbel import GumbelQuantizer
from tamer.nn.quantize.lfq import LookupFreeQuantizer
from tamer.nn.quantize.residual import ResidualQuantizer
from tamer.nn.quantize.simvq import SimVQuantizer
from tamer.nn.quantize.vq import VectorQuantizer

_BY_KIND = {"vq": VectorQuantizer, "gumbel": GumbelQuantizer, "fsq": FiniteScalarQuantizer,
            "lfq": LookupFreeQuantizer, "simvq": SimVQuantizer, "residual": ResidualQuantizer}


def build_quantizer(config: QuantizerConfig) -> Quantizer:
    return _BY_KIND[config.kind](config)


__all__ = ["KINDS", "Quantized", "Quantizer", "QuantizerConfig", "build_quantizer", "VectorQuantizer",
           "GumbelQuantizer", "FiniteScalarQuantizer", "LookupFreeQuantizer", "SimVQuantizer", "ResidualQuantizer"]
