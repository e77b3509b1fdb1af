"""VQ-VAE with an exponential-moving-average codebook (van den Oord et al.; thesis).

Nearest codeword per grid cell, straight-through gradient, commitment weight β = 0.25. The
codebook, cluster sizes and embedding sums are buffers updated in place under ``no_grad``:
N_k ← γ N_k + (1 − γ) n_k;  m_k ← γ m_k + (1 − γ) Σ z;  Laplace smoothing
Ñ_k = (N_k + ε) / (N + V ε) · N;  e_k = m_k / Ñ_k. (The thesis code rebuilt the codebook as a
new Parameter every step, which detached it from its optimizer and voided its separate learning
rate; here nothing optimises the codebook but the EMA.) Optionally, codes whose cluster size
falls below ``restart_threshold`` are restarted at encoder outputs of the current batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Autoencoder, check_shape, code_usage, decoder, encoder


@dataclass(frozen=True)
class VQVAEConfig:
    vocab_size: int = 256  # V codewords (the name tokenizers and OpenAI's dVAE use too)
    dim: int = 64  # codeword dimension D
    hidden: int = 256
    downsamples: int = 2
    n_rd: int = 4
    n_rb: int = 4
    image_size: int = 128
    beta: float = 0.25  # commitment
    decay: float = 0.99  # EMA γ
    eps: float = 1e-5  # Laplace smoothing ε
    restart_threshold: float = 0.0  # 0: no dead-code restarts

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.downsamples


class EMACodebook(nn.Module):
    def __init__(self, vocab_size: int, dim: int, decay: float, eps: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        init = torch.randn(vocab_size, dim, generator=generator)
        self.register_buffer("codebook", init.clone())  # (V, D)
        self.register_buffer("cluster_size", torch.ones(vocab_size))  # N_k
        self.register_buffer("embed_sum", init.clone())  # m_k
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_from(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent start: codewords drawn from the first batch's encoder outputs, so none
        begins far from the data (a random N(0, 1) codebook left most codes unused here)."""
        pick = torch.randint(len(z), (self.codebook.shape[0],), generator=generator, device=z.device)
        self.codebook.copy_(z[pick].float())
        self.embed_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) → index of the nearest codeword (N,), squared Euclidean distance in fp32."""
        z, e = z.float(), self.codebook.float()
        d = (z * z).sum(1, keepdim=True) - 2 * z @ e.t() + (e * e).sum(1)[None, :]
        return d.argmin(dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA step for a batch of encoder outputs z (N, D) assigned to codes idx (N,)."""
        onehot = F.one_hot(idx, self.codebook.shape[0]).type(torch.float32)  # (N, V)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.t() @ z.float(), alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> int:
        dead = (self.cluster_size < threshold).nonzero().flatten()
        if len(dead) == 0 or len(z) == 0:
            return 0
        pick = torch.randint(len(z), (len(dead),), generator=generator, device=z.device)
        self.codebook[dead] = z[pick].float()
        self.embed_sum[dead] = z[pick].float()
        self.cluster_size[dead] = 1.0
        return len(dead)


class VQVAE(Autoencoder):
    kind = "vqvae"

    def __init__(self, cfg: VQVAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder(3, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, cfg.dim)
        self.decoder = decoder(cfg.dim, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, 3)
        self.codebook = EMACodebook(cfg.vocab_size, cfg.dim, cfg.decay, cfg.eps, generator)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        check_shape(x, (None, 3, s, s), "vqvae input")
        return self.encoder(x)  # (B, D, h, w)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.latents(x)
        b, d, h, w = z.shape
        return self.codebook.nearest(z.permute(0, 2, 3, 1).reshape(-1, d)).view(b, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        check_shape(tokens, (None, g, g), "vqvae tokens")
        q = self.codebook.codebook[tokens.long()].permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(q)

    def forward(self, x: torch.Tensor, step: int = 0, generator: torch.Generator | None = None) -> dict:
        z = self.latents(x)  # (B, D, h, w)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        if self.training and not bool(self.codebook.initialized):
            self.codebook.init_from(flat.detach(), generator)
        idx = self.codebook.nearest(flat.detach())
        q = self.codebook.codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        with torch.autocast(device_type=x.device.type, enabled=False):
            commit = F.mse_loss(z.float(), q.float())
        if self.training:
            self.codebook.update(flat.detach(), idx)
            if self.cfg.restart_threshold > 0:
                self.codebook.restart_dead(flat.detach(), self.cfg.restart_threshold, generator)
        q_st = z + (q - z).detach()  # straight-through: decoder gradients flow to the encoder
        recon = self.decoder(q_st)
        with torch.autocast(device_type=x.device.type, enabled=False):
            rec = F.mse_loss(recon.float(), x.float())
        return {"loss": rec + self.cfg.beta * commit, "rec": rec.detach(), "commit": commit.detach(), "recon": recon, **code_usage(idx, self.cfg.vocab_size)}
