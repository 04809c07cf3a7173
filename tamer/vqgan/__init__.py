"""Stage 1, the image tokenizer: :class:`VQGAN` (encoder, quantizer, decoder) and its training loss."""

from tamer.vqgan.model import VQGAN, VQGANConfig

__all__ = ["VQGAN", "VQGANConfig"]
