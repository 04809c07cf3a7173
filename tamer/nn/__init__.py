"""Building blocks of both stages: the autoencoder, the quantizers (``quantize/``, one file per family), the GPT
with its KV cache, the PatchGAN discriminator and the LPIPS perceptual loss. Nothing here knows about training."""
