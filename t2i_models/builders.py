"""Named autoencoder configurations (torchtune's _model_builders style), and the one check of
``model.<field>=value`` overrides that every builder (autoencoders, priors, CLIP) applies."""
from __future__ import annotations

import dataclasses

from t2i_data.errors import T2IError

from .dvae import DVAE, DVAEConfig
from .vqvae import VQVAE, VQVAEConfig
from .vqvae2 import VQVAE2, VQVAE2Config
from .vqvae_study import VQVAEStudy, VQVAEStudyConfig

# The thesis' configurations: MD-MNIST dVAE V=256, H=256, 2 downsamples, N_RD=4, N_RB=4;
# CUB-64/128 dVAE V=512, H=512, 2 downsamples, N_RD=6, N_RB=4. VQ-VAEs share the stacks.
CONFIGS = {
    "dvae_mdmnist": DVAEConfig(vocab_size=256, hidden=256, downsamples=2, n_rd=4, n_rb=4, image_size=128),
    "dvae_cub64": DVAEConfig(vocab_size=512, hidden=512, downsamples=2, n_rd=6, n_rb=4, image_size=64),
    "dvae_cub128": DVAEConfig(vocab_size=512, hidden=512, downsamples=2, n_rd=6, n_rb=4, image_size=128),
    # dim = vocab_size: Table 5's note, "the vocabulary size parameter is responsible for both
    # number of tokens and their dimension in case of VQ-VAE model"
    "vqvae_mdmnist": VQVAEConfig(vocab_size=256, dim=256, hidden=256, downsamples=2, n_rd=4, n_rb=4, image_size=128),
    "vqvae_cub64": VQVAEConfig(vocab_size=512, dim=512, hidden=512, downsamples=2, n_rd=6, n_rb=4, image_size=64),
    "vqvae_cub128": VQVAEConfig(vocab_size=512, dim=512, hidden=512, downsamples=2, n_rd=6, n_rb=4, image_size=128),
    # tiny ones for tests and smoke runs
    "dvae_tiny": DVAEConfig(vocab_size=32, hidden=32, downsamples=2, n_rd=1, n_rb=1, image_size=32, tau_start=1.0, tau_end=0.5, tau_steps=200,
                            kl_steps=50, kl_weight=0.01),
    "vqvae_tiny": VQVAEConfig(vocab_size=32, dim=16, hidden=32, downsamples=2, n_rd=1, n_rb=1, image_size=32, decay=0.9, restart_threshold=0.05),
    # VQ-VAE-2 (vqvae2.py). The COCO study (seeds/000) names VQ-VAE-2 but gives no size: Razavi et al.
    # 2019's ImageNet 256x256 model (Table 4: bottom 64x64, top 32x32, 512 codes of dim 64 per level,
    # hidden 128, residual 64, 2 residual blocks, beta 0.25) is VQVAE2Config's defaults.
    "vqvae2_coco256": VQVAE2Config(),
    "vqvae2_tiny": VQVAE2Config(image_size=32, hidden=32, res_hidden=16, n_res=1, dim=16, vocab_top=32, vocab_bottom=32, decay=0.9,
                                restart_threshold=0.05),
    # The 128x128 VQ-VAE study (seeds/001, vqvae_study.py): 7x7 stem, 6 BatchNorm residual blocks, 3 downsamplings to
    # 16x16, 256 filters, 512 codes (VQVAEStudyConfig's defaults, each with its source there).
    "vqvae_study128": VQVAEStudyConfig(),
    "vqvae_study_tiny": VQVAEStudyConfig(image_size=32, hidden=16, dim=8, vocab_size=32, blocks=2, downsamples=2, decay=0.9),
}


def config_with(cfg_cls, base: dict, overrides: dict, what: str):
    """``cfg_cls(**{**base, **overrides})``, after refusing override keys that are not fields of
    ``cfg_cls`` with a ``T2IError`` naming them and the known fields (a ``TypeError`` from the
    dataclass would name neither the setting nor what to do)."""
    from t2i_data.config import check_types

    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise T2IError(f"{', '.join('model.' + k for k in unknown)}: not a setting of {what}; "
                       f"known: {', '.join(sorted(fields))}")
    check_types(cfg_cls, overrides, lambda name: f"model.{name}")
    try:
        return cfg_cls(**{**base, **overrides})
    except ValueError as e:  # the config's own range checks
        raise T2IError(f"{what}: {e}") from None


def build_autoencoder(name_or_cfg, **overrides):
    """A model from a builder name (``CONFIGS``) or a config, with field overrides
    (``T2IError`` for a field the config does not have)."""
    if isinstance(name_or_cfg, str):
        if name_or_cfg not in CONFIGS:
            raise T2IError(f"unknown autoencoder {name_or_cfg!r}; known: {', '.join(CONFIGS)}")
        cfg, what = CONFIGS[name_or_cfg], name_or_cfg
    else:
        cfg, what = name_or_cfg, type(name_or_cfg).__name__
    cfg = config_with(type(cfg), dataclasses.asdict(cfg), overrides, what)
    try:
        if isinstance(cfg, VQVAEStudyConfig):
            return VQVAEStudy(cfg)
        return DVAE(cfg) if isinstance(cfg, DVAEConfig) else VQVAE2(cfg) if isinstance(cfg, VQVAE2Config) else VQVAE(cfg)
    except ValueError as e:  # an architecture that cannot be built (e.g. more downsamples than the image allows)
        raise T2IError(f"{what}: {e}") from None
