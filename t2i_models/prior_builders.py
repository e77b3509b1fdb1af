"""Named prior configurations from the thesis; the token spaces come from the tokenizer and the
autoencoder (MD-MNIST defaults: the 24-id symbol vocabulary, L = 12, pad 20; V = 256 codes on a
32 × 32 grid). Every builder takes the token spaces and ``model.<field>`` overrides alike as
keyword arguments; an unknown field stops with ``T2IError`` naming the known ones."""
from __future__ import annotations

from .builders import config_with
from .g1 import G1, G1Config
from .g2 import G2, G2Config
from .g3 import G3, G3Config

MDMNIST_TOKENS = dict(text_vocab=24, text_len=12, pad_id=20, image_vocab=256, grid=32)


def _g1(arch: dict, over: dict, name: str) -> G1:
    return G1(config_with(G1Config, arch, over, name))


def _g2(arch: dict, over: dict, name: str) -> G2:
    return G2(config_with(G2Config, arch, over, name))


def g1_mdmnist(**over) -> G1:
    return _g1(dict(MDMNIST_TOKENS, layers=12, heads=8, width=256), over, "g1_mdmnist")


def g2_mdmnist(**over) -> G2:
    return _g2(dict(MDMNIST_TOKENS, encoder_layers=6, decoder_layers=12, heads=8, width=256), over, "g2_mdmnist")


def g2_cub64(**over) -> G2:
    return _g2(dict(encoder_layers=8, decoder_layers=12, heads=8, width=512), over, "g2_cub64")


def g2_cub128(**over) -> G2:
    return _g2(dict(encoder_layers=16, decoder_layers=12, heads=8, width=512), over, "g2_cub128")


def g1_tiny(**over) -> G1:
    return _g1(dict(MDMNIST_TOKENS, image_vocab=32, grid=4, layers=2, heads=2, width=64, dropout=0.0), over, "g1_tiny")


def g2_tiny(**over) -> G2:
    return _g2(dict(MDMNIST_TOKENS, image_vocab=32, grid=4, encoder_layers=2, decoder_layers=2, heads=2, width=64, dropout=0.0),
               over, "g2_tiny")


def g3_mdmnist(**over) -> G3:
    """BERT2GPT2 with the MD-MNIST G2's depths (optional; the seed report's variant)."""
    return G3(config_with(G3Config, dict(MDMNIST_TOKENS, encoder_layers=6, decoder_layers=12, heads=8, width=256), over, "g3_mdmnist"))


def g3_tiny(**over) -> G3:
    return G3(config_with(G3Config, dict(MDMNIST_TOKENS, image_vocab=32, grid=4, encoder_layers=1, decoder_layers=2, heads=2, width=64),
                          over, "g3_tiny"))


PRIORS = {f.__name__: f for f in (g1_mdmnist, g2_mdmnist, g2_cub64, g2_cub128, g3_mdmnist, g1_tiny, g2_tiny, g3_tiny)}
