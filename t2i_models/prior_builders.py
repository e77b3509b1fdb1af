"""Named prior configurations from the thesis; the token spaces come from the tokenizer and the
autoencoder (MD-MNIST defaults: the 24-id symbol vocabulary, L = 12, pad 20; V = 256 codes on a
32 × 32 grid)."""
from __future__ import annotations

from .g1 import G1, G1Config
from .g2 import G2, G2Config
from .g3 import G3, G3Config

MDMNIST_TOKENS = dict(text_vocab=24, text_len=12, pad_id=20, image_vocab=256, grid=32)


def g1_mdmnist(**tokens) -> G1:
    return G1(G1Config(**{**MDMNIST_TOKENS, **tokens}, layers=12, heads=8, width=256))


def g2_mdmnist(**tokens) -> G2:
    return G2(G2Config(**{**MDMNIST_TOKENS, **tokens}, encoder_layers=6, decoder_layers=12, heads=8, width=256))


def g2_cub64(**tokens) -> G2:
    return G2(G2Config(**tokens, encoder_layers=8, decoder_layers=12, heads=8, width=512))


def g2_cub128(**tokens) -> G2:
    return G2(G2Config(**tokens, encoder_layers=16, decoder_layers=12, heads=8, width=512))


def g1_tiny(**tokens) -> G1:
    return G1(G1Config(**{**MDMNIST_TOKENS, "image_vocab": 32, "grid": 4, **tokens}, layers=2, heads=2, width=64, dropout=0.0))


def g2_tiny(**tokens) -> G2:
    return G2(G2Config(**{**MDMNIST_TOKENS, "image_vocab": 32, "grid": 4, **tokens}, encoder_layers=2, decoder_layers=2, heads=2,
                       width=64, dropout=0.0))


def g3_mdmnist(**tokens) -> G3:
    """BERT2GPT2 with the MD-MNIST G2's depths (optional; the seed report's variant)."""
    return G3(G3Config(**{**MDMNIST_TOKENS, **tokens}, encoder_layers=6, decoder_layers=12, heads=8, width=256))


def g3_tiny(**tokens) -> G3:
    return G3(G3Config(**{**MDMNIST_TOKENS, "image_vocab": 32, "grid": 4, **tokens}, encoder_layers=1, decoder_layers=2, heads=2, width=64))


PRIORS = {f.__name__: f for f in (g1_mdmnist, g2_mdmnist, g2_cub64, g2_cub128, g3_mdmnist, g1_tiny, g2_tiny, g3_tiny)}
