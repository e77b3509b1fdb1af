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


# The thesis' transformers (Tables 6 and 7; MLP of Table 4: Linear, Dropout, ReLU, Linear).
# "Hidden dim." (512 in Tables 6 and 7) is read as Table 4's H_hidden, the MLP width, as Table 8
# uses it for CLIP (representation dim. 128, hidden dim. 256); the residual width is the thesis
# code's, 256 for MD-MNIST. CUB gives no other width, so 512 serves as both there.
THESIS_MLP = dict(heads=8, dropout=0.1, mlp=512, activation="relu")


def g1_mdmnist(**over) -> G1:
    """Table 6, G1: 12 blocks over text and image, 8 heads, dropout 0.1, width 256 and MLP 512
    (see ``THESIS_MLP``); the text prefix causal, as in the thesis code."""
    return _g1(dict(MDMNIST_TOKENS, layers=12, width=256, text_causal=True, **THESIS_MLP), over, "g1_mdmnist")


def g2_mdmnist(**over) -> G2:
    """Table 6, G2: 6 text encoder blocks, 12 image blocks, 8 heads, dropout 0.1, width 256, MLP 512."""
    return _g2(dict(MDMNIST_TOKENS, encoder_layers=6, decoder_layers=12, width=256, **THESIS_MLP), over, "g2_mdmnist")


def g2_cub64(**over) -> G2:
    """Table 7, CUB 64: 8 text encoder blocks, 14 image blocks, 8 heads, dropout 0.1, width and MLP 512."""
    return _g2(dict(encoder_layers=8, decoder_layers=14, width=512, **THESIS_MLP), over, "g2_cub64")


def g2_cub128(**over) -> G2:
    """Table 7, CUB 128: 16 text encoder blocks, 12 image blocks, 8 heads, dropout 0.1, width and MLP 512."""
    return _g2(dict(encoder_layers=16, decoder_layers=12, width=512, **THESIS_MLP), over, "g2_cub128")


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


# The DALL·E reproduction on COCO 2017 (seed 004, §2.2): the OpenAI dVAE's 8,192 codes on a 32 × 32
# grid (§2.2.1: "1024 token tensors, representing a 32x32 matrix ... a vocabulary of 8192"), the
# captions through bert-base-uncased's WordPiece ("a 30522 words vocabulary", pad [PAD] = 0). The
# seed gives no caption length: 64 (this project's COCO tokenizing length, bench/bench_tokenize.py),
# room for COCO's captions (longest 247 characters, README) with [CLS] and [SEP], an eighth of
# BERT's 512 positions; the tokenize stage counts the captions it cuts (manifest stats.truncated).
COCO_DALLE_TOKENS = dict(text_vocab=30522, text_len=64, pad_id=0, image_vocab=8192, grid=32)


def g3_coco(**over) -> G3:
    """BERT2GPT2 of the DALL·E reproduction on COCO 2017 (seed 004, §2.2.2): BERT-base as the
    encoder (Devlin et al. 2019, BERT_BASE: 12 layers, hidden size 768, 12 heads, feed-forward
    3,072 = 4 · 768, 512 positions, GELU; bert-base-uncased's config.json), GPT-2 small as the
    decoder (Radford et al. 2019, the 117M model: 12 layers, d_model 768, 12 heads as in GPT-1,
    feed-forward 4 · 768, 1,024 positions = the 32 × 32 grid; gpt2's config.json), its vocabulary
    8,193 = the dVAE's 8,192 codes + BOS (§2.2.2). Token spaces ``COCO_DALLE_TOKENS``; in a run
    they come from the token shards' manifests. Random weights, or the seed's pretrained start
    with ``model.bert=DIR model.gpt2=DIR`` (local bert-base-uncased and gpt2 folders; ``g3``)."""
    arch = dict(COCO_DALLE_TOKENS, encoder_layers=12, decoder_layers=12, heads=12, width=768, mlp=0, activation="gelu",
                text_positions=512)
    return G3(config_with(G3Config, arch, over, "g3_coco"))


PRIORS = {f.__name__: f for f in (g1_mdmnist, g2_mdmnist, g2_cub64, g2_cub128, g3_mdmnist, g3_coco, g1_tiny, g2_tiny, g3_tiny)}
KINDS = {"g1": (G1, G1Config), "g2": (G2, G2Config), "g3": (G3, G3Config)}


def prior_from_config(kind: str, config: dict, what: str = "checkpoint"):
    """The prior that a saved ``model.config_dict()`` describes (``kind`` "g1", "g2" or "g3").
    Fields added after it was saved take their dataclass defaults, which are the architecture
    from before they existed (``mlp`` 0 = 4 · width, ``activation`` "gelu"), so a checkpoint
    keeps loading when a builder's defaults change (the thesis builders gained MLP 512 / ReLU in
    issue 17; rebuilding an old g1_mdmnist checkpoint from its builder name would not fit its
    weights). ``T2IError`` for an unknown kind or field, naming ``what``."""
    from t2i_data.errors import T2IError

    if kind not in KINDS:
        raise T2IError(f"{what}: prior kind {kind!r} unknown; known: {', '.join(KINDS)}")
    model_cls, cfg_cls = KINDS[kind]
    cfg = config_with(cfg_cls, {}, dict(config), what)
    return model_cls(cfg)
