"""t2i_models: discrete autoencoders (dVAE, VQ-VAE) and transformer priors (G1, G2).

Empty until the autoencoder and prior issues land; the package exists so the layout of
DESIGN.md holds from the first commit.
"""
