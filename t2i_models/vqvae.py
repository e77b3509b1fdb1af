"""VQ-VAE (van den Oord et al. 2017; thesis §5.2, Table 5) with an EMA or a loss-learned codebook.

Nearest codeword per grid cell, straight-through gradient, commitment weight β = 0.25.

``codebook = "ema"`` (default): the codebook, cluster sizes and embedding sums are buffers
updated in place under ``no_grad`` (van den Oord et al. 2017, appendix A.1, Eqs. 6–8, γ = 0.99):
N_k ← γ N_k + (1 − γ) n_k;  m_k ← γ m_k + (1 − γ) Σ z;  Laplace smoothing Ñ_k = (N_k + ε) /
(N + V ε) · N;  e_k = m_k / Ñ_k. Loss = rec + β‖z − sg[e]‖².
(The thesis code rebuilt the codebook as a new Parameter every step, which detached it from its
optimizer and voided its separate learning rate.)

``codebook = "loss"``: the codebook is an ``nn.Parameter`` (V, D) learned by the loss
rec + ‖sg[z] − e‖² + β‖z − sg[e]‖² (van den Oord et al., Eq. 3), so it can have its own learning
rate (Table 5's "LR vocabulary" column, 0.01 against 0.001: ``VQVAE.codebook_parameters()`` gives
the trainer the parameters for their own group). Its cluster sizes are still tracked by EMA, in a
buffer, for dead-code restarts only.

Both: codes whose cluster size falls below ``restart_threshold`` are restarted at encoder
outputs of the current batch (0: never). The codebook starts from encoder outputs of the first
batch (``init_output_bias``, which the trainer calls before the first step); a model whose
codebook was never initialised that way (a forward straight after construction) runs on its
random N(0, 1) start, which works but leaves most codes unused for longer. No training forward
reads a value back to the host.

Under DDP (``torchrun``, ``distributed.wrap_ddp``) the codebook learns from the global batch:
the counts n_k and sums Σ z of every rank are summed (``all_reduce``) before each EMA step, and the
first-batch start and the restarts draw their rows from the global batch with rank 0's random
draw, so every rank holds the codebook one process would hold after the same global batches
(tests/test_ddp_ema.py: 2 gloo processes against 1, in float64). Until this, DDP's
``broadcast_buffers`` made rank 0's statistics win: the other ranks' batches never reached the
codebook. The broadcast stays on (it also carries the BatchNorm running statistics, which stay
per rank); on buffers that are already equal on every rank it changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Autoencoder, check_shape, code_usage, decoder, encoder
from .distributed import active_world, broadcast_from_rank0, global_rows, sum_across_ranks


CODEBOOKS = ("ema", "loss")


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
    codebook: str = "ema"  # "ema" (buffers, EMA updates) or "loss" (a Parameter learned by the codebook loss)

    def __post_init__(self) -> None:
        if self.codebook not in CODEBOOKS:
            raise ValueError(f"codebook must be one of {', '.join(CODEBOOKS)}, got {self.codebook!r}")
        if not 0 <= self.decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.downsamples


class EMACodebook(nn.Module):
    """The EMA codebook of van den Oord et al. 2017, appendix A.1 (Eqs. 6–8), as sonnet's
    ``VectorQuantizerEMA`` and Razavi et al. 2019 (VQ-VAE-2, §2.1) use it. Buffers ``codebook``
    e (V, D), ``cluster_size`` N (V,), ``embed_sum`` m (V, D) (all in the model's float dtype) and
    ``initialized`` (a bool kept for the state dicts of older checkpoints; set by ``init_from``).

    One step (``update``) on the encoder outputs z (N, D) of a batch, with n_i the number of them
    assigned to code i:  N_i ← γ N_i + (1 − γ) n_i  (Eq. 6);  m_i ← γ m_i + (1 − γ) Σ_{j: i} z_j
    (Eq. 7);  e_i = m_i / Ñ_i (Eq. 8) with the Laplace-smoothed Ñ_i = (N_i + ε) / (N + V ε) · N,
    N = Σ N_i (sonnet's ``VectorQuantizerEMA``; the paper leaves a zero count undefined). γ = 0.99
    in the paper (``decay``), ε = 1e-5 (``eps``).

    Under torch.distributed (a default process group of more than one process, as under
    ``torchrun``) the batch is the global one, the concatenation of every rank's rows in rank
    order: n_i and Σ z_j are summed over ranks (one ``all_reduce``) before the step, so every rank
    applies the same update, the one a single process would apply to the global batch, and a code
    that only one rank's batch uses moves on every rank. The starting draw (``init_from``) and the
    dead-code restarts (``restart_dead``) draw their rows from the global batch the same way
    (``_draw_rows``). DDP's ``broadcast_buffers`` then sends rank 0's buffers, already equal on
    every rank, at the next forward: harmless."""

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
        """Data-dependent start: codewords drawn from the first batch's encoder outputs z (N, D),
        so none begins far from the data (a random N(0, 1) codebook left most codes unused here).
        Under torch.distributed the rows come from the global batch, with rank 0's draw
        (``_draw_rows``): every rank starts alike, as one process on the global batch would."""
        fresh, _ = _draw_rows(z, self.codebook.shape[0], generator, self.codebook.dtype)
        self.codebook.copy_(fresh)
        if hasattr(self, "embed_sum"):
            self.embed_sum.copy_(self.codebook)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) → index of the nearest codeword (N,) int64, squared Euclidean distance in fp32
        (in fp64 for a float64 codebook; autocast off: a bf16 matmul would round distances and
        flip near ties)."""
        dt = torch.promote_types(self.codebook.dtype, torch.float32)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, e = z.to(dt), self.codebook.to(dt)
            d = (z * z).sum(1, keepdim=True) - 2 * z @ e.t() + (e * e).sum(1)[None, :]
        return d.argmin(dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """EMA step (class docstring, Eqs. 6–8) for this rank's encoder outputs z (N, D) assigned to
        codes idx (N,) int64; under torch.distributed the counts n_i and sums Σ z_j are those of
        the global batch (one ``all_reduce`` SUM of a (V, D + 1) tensor). Computed in the buffers'
        dtype with autocast off (a bf16 matmul would round the sums)."""
        v, dt = self.codebook.shape[0], self.embed_sum.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            onehot = F.one_hot(idx, v).to(dt)  # (N, V)
            stats = torch.cat([onehot.sum(0)[:, None], onehot.t() @ z.to(dt)], dim=1)  # (V, 1 + D): n_i, Σ z_j
        _sum_statistics(stats)
        self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + v * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes with N_k < ``threshold`` restart at random rows of the batch's encoder outputs z
        (N, D) (the global batch under torch.distributed, ``_draw_rows``), with N_k = 1 (and m_k =
        the row). N_k is already the global count after ``update``, so every rank restarts the same
        codes at the same rows. Returns the number restarted as a 0-dim tensor: the selection is a
        ``torch.where`` over all V codes (one candidate row drawn per code), so nothing is read
        back to the host. An empty batch (on every rank) restarts nothing."""
        if len(z) == 0 and active_world() == 1:
            return torch.zeros((), dtype=torch.long, device=z.device)
        fresh, total = _draw_rows(z, self.codebook.shape[0], generator, self.codebook.dtype)
        dead = (self.cluster_size < threshold) & (total > 0)  # (V,)
        self.codebook.copy_(torch.where(dead[:, None], fresh, self.codebook))
        if hasattr(self, "embed_sum"):
            self.embed_sum.copy_(torch.where(dead[:, None], fresh, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead, torch.ones_like(self.cluster_size), self.cluster_size))
        return dead.sum()


class LossCodebook(EMACodebook):
    """``codebook`` (V, D) is a Parameter learned by the codebook loss (van den Oord et al. 2017,
    Eq. 3; under DDP its gradient is averaged like any other); ``cluster_size`` (the EMA of the
    counts, Eq. 6, for restarts only) and ``initialized`` are buffers. The same state-dict names as
    the EMA codebook, less ``embed_sum``. Under torch.distributed the counts are the global
    batch's, as in ``EMACodebook.update``."""

    def __init__(self, vocab_size: int, dim: int, decay: float, eps: float, generator: torch.Generator | None = None) -> None:
        nn.Module.__init__(self)
        self.decay, self.eps = decay, eps
        self.codebook = nn.Parameter(torch.randn(vocab_size, dim, generator=generator))  # (V, D)
        self.register_buffer("cluster_size", torch.ones(vocab_size))  # N_k, counts only
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        """Only the cluster sizes (Eq. 6, global counts under torch.distributed): the codewords
        move by their gradient."""
        counts = torch.zeros_like(self.cluster_size).index_add_(0, idx, torch.ones_like(idx, dtype=self.cluster_size.dtype))
        _sum_statistics(counts)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)


def _sum_statistics(t: torch.Tensor) -> torch.Tensor:
    """The one place a codebook's statistics (counts n_i, sums Σ z_j) cross ranks:
    ``distributed.sum_across_ranks``, in place. tests/ddp_ema_worker.py replaces it with the
    identity to show that its comparison fails without the sum (each rank's own statistics)."""
    return sum_across_ranks(t)


def _draw_rows(z: torch.Tensor, count: int, generator: torch.Generator | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` rows drawn uniformly, with replacement, from the global batch: the concatenation,
    in rank order, of every rank's z (N_r, D) (one process: z itself). Returns (rows (count, D) in
    ``dtype``, the global row count as a 0-dim int64 tensor; rows are 0 when it is 0).

    Rank 0 draws ``count`` integers in [0, 2^62) from ``generator`` and broadcasts them (so the
    draw is the same on every rank whatever each rank's generator holds); row r = draw mod N of
    the global batch (the bias of the modulo is below N / 2^62). Each rank fills the rows that fall
    in its own part, zeros elsewhere, and a sum over ranks gives every rank the same rows, bit for
    bit (one term of each sum is not zero). One process takes the same path without the
    collectives, so 2 processes on halves of a batch draw exactly the rows 1 process draws on the
    whole. Nothing is read back to the host."""
    n = len(z)
    offset, total = global_rows(n, z.device)
    raw = broadcast_from_rank0(torch.randint(0, 2**62, (count,), generator=generator, device=z.device))
    local = raw % total.clamp(min=1) - offset  # (count,) index into this rank's rows if in [0, n); clamp: total 0 → no rows, masked by the caller
    mine = (local >= 0) & (local < n)
    rows = torch.zeros(count, z.shape[1], dtype=dtype, device=z.device)
    if n:
        rows = torch.where(mine[:, None], z[local.clamp(0, n - 1)].to(dtype), rows)  # clamp: out-of-part indices are masked out
    return sum_across_ranks(rows), total


class VQVAE(Autoencoder):
    kind = "vqvae"

    def __init__(self, cfg: VQVAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder(3, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, cfg.dim)
        self.decoder = decoder(cfg.dim, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, 3)
        book = EMACodebook if cfg.codebook == "ema" else LossCodebook
        self.codebook = book(cfg.vocab_size, cfg.dim, cfg.decay, cfg.eps, generator)

    def codebook_parameters(self) -> list[nn.Parameter]:
        """The parameters the codebook loss trains ([codewords (V, D)] for ``codebook = "loss"``,
        [] for "ema"), for an optimizer group at their own learning rate (Table 5 "LR vocabulary")."""
        return [self.codebook.codebook] if self.cfg.codebook == "loss" else []

    @torch.no_grad()
    def init_output_bias(self, x: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """The decoder's output bias (``Autoencoder.init_output_bias``) and, once, the codebook from
        this batch's encoder outputs (``EMACodebook.init_from``): here rather than in ``forward``
        so that the training forward never reads ``initialized`` back to the host. The encoder
        runs in training mode (batch statistics, as the first training step sees them) with its
        BatchNorm running statistics restored afterwards."""
        super().init_output_bias(x)
        if bool(self.codebook.initialized):
            return
        saved = {k: v.clone() for k, v in self.encoder.named_buffers()}
        was = self.training
        self.train()
        z = self.latents(x)  # (B, D, h, w)
        self.train(was)
        bufs = dict(self.encoder.named_buffers())
        for k, v in saved.items():
            bufs[k].copy_(v)
        self.codebook.init_from(z.permute(0, 2, 3, 1).reshape(-1, self.cfg.dim), generator)

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

    def forward(self, x: torch.Tensor, step: int = 0, generator: torch.Generator | None = None, rec_loss=None) -> dict:
        """One training pass: {"loss", "rec" (MSE), "commit" (‖z − sg[e]‖², mean), "recon"
        (B, 3, S, S), "perplexity", "used"} and, for ``codebook = "loss"``, "codebook_loss"
        (‖sg[z] − e‖², mean). Scalars are 0-dim tensors; nothing is read back to the host.
        ``rec_loss``: a callable (recon, x) → 0-dim loss used as "rec" instead of the pixel MSE
        (``perceptual.PerceptualLoss``); the pixel MSE is then reported as "mse"."""
        z = self.latents(x)  # (B, D, h, w)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (B·h·w, D)
        idx = self.codebook.nearest(flat.detach())
        q = self.codebook.codebook[idx].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w); a gradient to e for "loss"
        with torch.autocast(device_type=x.device.type, enabled=False):
            commit = F.mse_loss(z.float(), q.detach().float())
            book = F.mse_loss(q.float(), z.detach().float()) if self.cfg.codebook == "loss" else None
        if self.training:
            self.codebook.update(flat.detach(), idx)
            if self.cfg.restart_threshold > 0:
                self.codebook.restart_dead(flat.detach(), self.cfg.restart_threshold, generator)
        q_st = z + (q - z).detach()  # straight-through: decoder gradients flow to the encoder
        recon = self.decoder(q_st)
        with torch.autocast(device_type=x.device.type, enabled=False):
            rec = F.mse_loss(recon.float(), x.float())
        extra = {}
        if rec_loss is not None:
            extra["mse"] = rec.detach()
            rec = rec_loss(recon, x)
        loss = rec + self.cfg.beta * commit
        if book is not None:
            loss = loss + book
            extra["codebook_loss"] = book.detach()
        return {"loss": loss, "rec": rec.detach(), "commit": commit.detach(), **extra, "recon": recon, **code_usage(idx, self.cfg.vocab_size)}
