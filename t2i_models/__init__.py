"""t2i_models: discrete autoencoders (dVAE, VQ-VAE) and, to come, the transformer priors (G1, G2).

``builders.build_autoencoder(name)`` makes the thesis' named configurations (``CONFIGS``).
"""
