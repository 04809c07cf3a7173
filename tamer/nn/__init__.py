"""Building blocks: autoencoder, quantizers (and, as they come, GPT, discriminator, perceptual loss)."""
