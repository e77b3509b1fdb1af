"""The VQ-VAE of the 128x128 text-to-image study (seeds/001_05c1dfe4af34c044.txt, §2, "Our basic
model architecture"): a single 7x7 input conv, six residual blocks of four 3x3 convs "with batch
normalization and ReLU in between", three of which downsample, to an nhid x 16 x 16 grid (nhid =
256), 512 codes; the decoder is "the exact opposite", upsampling three times with transposed
convs. Reconstruction loss: pixel MSE or the ResNet-18 perceptual MSE (``perceptual.py``; passed
to ``forward`` as ``rec_loss``).

Encoder (B, 3, S, S) → stem conv k×k (3 → H) → blocks: [down, same] × 3 → 1x1 conv (H → D) = z
(B, D, S/8, S/8). Decoder: 1x1 conv (D → H) → [same, up] × 3 → BN → ReLU → conv k×k (H → 3) →
sigmoid. A block is  y = skip(x) + conv3(ReLU(BN(conv3(ReLU(BN(conv3(ReLU(BN(conv3'(x))))))))))
where conv3' has stride 2 in a down block (skip: 1x1 conv stride 2, ResNet's projection) and is a
3x3 transposed conv stride 2 in an up block (skip: 2x2 transposed conv stride 2).

Where the seed is silent (each choice marked "chosen" in ``VQVAEStudyConfig``): which blocks
downsample (every other one, starting with the first); the skip paths; the codebook dimension D
(256 = nhid: the seed quantises the "nhid x 16 x 16" encoder output; the 1x1 convs around the
codebook are taming's quant_conv / post_quant_conv, Esser et al. 2021, the paper the study
follows); the codebook (learned by the loss with commitment β = 0.25, van den Oord et al. 2017
Eq. 3, as in taming); the output sigmoid (images in [0, 1], as every decoder here).

BatchNorm: training uses batch statistics; ``encode`` / ``decode`` run in eval mode (the loaders
return the model in eval mode), so tokens come from the running statistics and an image's tokens
do not depend on the rest of its batch. Under DDP the BatchNorm layers are left per-rank (no
SyncBatchNorm, as the thesis models here): each rank normalises with its own batch, and DDP
broadcasts rank 0's running statistics with every forward. The codebook, by contrast, is global:
its counts (and, with ``codebook = "ema"``, its sums) are summed over ranks before each EMA step
(``vqvae.EMACodebook``; tests/test_ddp_ema.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .vqvae import CODEBOOKS, EMACodebook, LossCodebook, VQVAE


@dataclass(frozen=True)
class VQVAEStudyConfig:
    vocab_size: int = 512  # seed §2: "vector quantizer vocabulary (in this case, 512)"
    dim: int = 256  # codeword dimension D; chosen: = nhid (the seed quantises the nhid x 16 x 16 output)
    hidden: int = 256  # seed §2: "nhid is the number of conv filters (256 in our case)"
    blocks: int = 6  # seed §2: "a series of six residual encoder blocks"
    downsamples: int = 3  # seed §2: "down sampling happens three times" (128 → 16)
    stem_kernel: int = 7  # seed §2: "a single 7x7 conv layer"
    image_size: int = 128  # seed §2: "images of size 3x128x128"
    beta: float = 0.25  # chosen: commitment β of van den Oord et al. 2017 and taming (the seed gives none)
    decay: float = 0.99  # EMA γ, used only with codebook = "ema" (and for the loss codebook's usage counts)
    eps: float = 1e-5  # Laplace smoothing ε (codebook = "ema")
    restart_threshold: float = 0.0  # 0: no dead-code restarts (the seed mentions none)
    codebook: str = "loss"  # chosen: a codebook learned by the loss (van den Oord Eq. 3; taming's VectorQuantizer)

    def __post_init__(self) -> None:
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"codebook must be one of {', '.join(CODEBOOKS)}, got {self.codebook!r}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if not 1 <= self.downsamples <= self.blocks:
            raise ValueError(f"downsamples must be between 1 and blocks ({self.blocks}), got {self.downsamples}")
        if self.stem_kernel < 1 or self.stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd (the output keeps the input's size), got {self.stem_kernel}")
        if self.image_size % 2**self.downsamples:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^downsamples = {2**self.downsamples}")
        if min(self.vocab_size, self.dim, self.hidden) < 1:
            raise ValueError(f"vocab_size, dim and hidden must be >= 1, got {self.vocab_size}, {self.dim}, {self.hidden}")

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.downsamples

    def sampling_blocks(self) -> list[int]:
        """Indices of the encoder blocks that downsample: evenly spread, the first block first
        ([0, 2, 4] for 6 blocks and 3 downsamples); the decoder mirrors them."""
        return [i * self.blocks // self.downsamples for i in range(self.downsamples)]


class StudyBlock(nn.Module):
    """Four 3x3 convs with BN + ReLU between them, plus a skip. ``mode``: "same" (identity skip),
    "down" (stride 2: (B, C, H, W) → (B, C, H/2, W/2)) or "up" (H, W doubled)."""

    def __init__(self, c: int, mode: str = "same") -> None:
        super().__init__()
        if mode == "down":
            first = nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False)
            self.skip = nn.Conv2d(c, c, 1, stride=2)
        elif mode == "up":
            first = nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1, bias=False)
            self.skip = nn.ConvTranspose2d(c, c, 2, stride=2)
        elif mode == "same":
            first = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.skip = nn.Identity()
        else:
            raise ValueError(f"block mode must be same, down or up, got {mode!r}")
        layers: list[nn.Module] = [first]
        for i in range(3):  # BN + ReLU between the four convs; the last conv (bias, no BN) ends the branch
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=i == 2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def study_encoder(cfg: VQVAEStudyConfig) -> nn.Sequential:
    down = set(cfg.sampling_blocks())
    k = cfg.stem_kernel
    layers: list[nn.Module] = [nn.Conv2d(3, cfg.hidden, k, padding=k // 2)]  # (B, H, S, S)
    layers += [StudyBlock(cfg.hidden, "down" if i in down else "same") for i in range(cfg.blocks)]  # (B, H, S/8, S/8)
    layers += [nn.Conv2d(cfg.hidden, cfg.dim, 1)]  # (B, D, S/8, S/8)
    return nn.Sequential(*layers)


def study_decoder(cfg: VQVAEStudyConfig) -> nn.Sequential:
    """The encoder reversed; ``[-2][-1]`` is the output conv (``Autoencoder.init_output_bias``)."""
    up = {cfg.blocks - 1 - i for i in cfg.sampling_blocks()}  # mirror of the encoder's down blocks
    k = cfg.stem_kernel
    layers: list[nn.Module] = [nn.Conv2d(cfg.dim, cfg.hidden, 1)]
    layers += [StudyBlock(cfg.hidden, "up" if i in up else "same") for i in range(cfg.blocks)]  # (B, H, S, S)
    layers += [nn.Sequential(nn.BatchNorm2d(cfg.hidden), nn.ReLU(inplace=True), nn.Conv2d(cfg.hidden, 3, k, padding=k // 2)), nn.Sigmoid()]
    return nn.Sequential(*layers)


class VQVAEStudy(VQVAE):
    """The study's VQ-VAE; quantiser, ``encode`` (B, 3, S, S) → (B, S/8, S/8) int64, ``decode``,
    ``forward`` (with ``rec_loss``) and ``init_output_bias`` are ``VQVAE``'s."""

    kind = "vqvae_study"

    def __init__(self, cfg: VQVAEStudyConfig, generator: torch.Generator | None = None) -> None:
        nn.Module.__init__(self)
        self.cfg = cfg
        self.encoder = study_encoder(cfg)
        self.decoder = study_decoder(cfg)
        book = EMACodebook if cfg.codebook == "ema" else LossCodebook
        self.codebook = book(cfg.vocab_size, cfg.dim, cfg.decay, cfg.eps, generator)
