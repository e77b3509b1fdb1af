"""Discrete VAE with a Gumbel-softmax relaxation (thesis, after DALL·E).

Training: logits over V codes per grid cell; soft Gumbel-softmax sample at temperature τ
(annealed linearly τ_start → τ_end over ``tau_steps``); loss = reconstruction (BCE on [0, 1]
pixels, as the thesis, or DALL·E's log-Laplace) + λ · KL(mean code usage ‖ uniform). Tokens:
argmax of the logits, no noise.

λ: ``kl_weight`` from step 0 when ``kl_steps`` = 0 (thesis Table 6, MD-MNIST: "KL coef. value
0.01"), else linear from ``kl_start`` to ``kl_weight`` over ``kl_steps`` iterations and constant
after (Tables 5 and 7: "KL coef. start value 0, end value 0.001, iterations 70000").

Code usage (``kl_mode``): "batch" averages the softmax probabilities over every grid cell of the
batch, one distribution q (V,), and the term is KL(q ‖ uniform) ("the distribution of codewords
used in the current batch", thesis §5.2); "image" averages them over each image's grid cells,
q_b (V,) per image, and the term is the mean over images of KL(q_b ‖ uniform), as the thesis code
computes it. "image" pushes every image to use many codes; "batch" only the batch as a whole.

Schedule defaults are DALL·E's published ones (τ 1 → 1/16, KL weight up to 6.6 over 5,000 steps,
batch usage); every value is a config field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .blocks import Autoencoder, check_shape, code_usage, decoder, encoder


KL_MODES = ("batch", "image")


def usage_kl(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """KL(code usage ‖ uniform) in nats, fp32, 0-dim, from logits (B, V, h, w): usage = softmax
    over V averaged over the whole batch ("batch") or over each image's cells, the KL then
    averaged over images ("image"). 0 for uniform usage, log V when one code takes everything."""
    v = logits.shape[1]
    p = F.softmax(logits.float(), dim=1)
    q = p.mean(dim=(0, 2, 3))[None] if mode == "batch" else p.mean(dim=(2, 3))  # (1 or B, V)
    return (q * torch.log(q * v + 1e-10)).sum(dim=1).mean()


@dataclass(frozen=True)
class DVAEConfig:
    vocab_size: int = 256  # V codewords (the name tokenizers and OpenAI's dVAE use too)
    hidden: int = 256  # H
    downsamples: int = 2
    n_rd: int = 4  # residual blocks after every down/up-sample
    n_rb: int = 4  # residual blocks before the bottleneck
    image_size: int = 128
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_steps: int = 150_000
    kl_weight: float = 6.6  # λ at the end of the ramp (or throughout when kl_steps = 0)
    kl_steps: int = 5_000  # iterations of the linear ramp kl_start → kl_weight; 0: kl_weight from step 0
    kl_start: float = 0.0  # λ at step 0 (Tables 5, 7: "KL coef. start value 0")
    kl_mode: str = "batch"  # "batch" (usage over the whole batch) or "image" (per image, the thesis code)
    loss: str = "bce"  # "bce" (thesis) or "laplace" (DALL·E)

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "laplace"):
            raise ValueError(f"loss must be 'bce' or 'laplace', got {self.loss!r}")
        if self.kl_mode not in KL_MODES:
            raise ValueError(f"kl_mode must be one of {', '.join(KL_MODES)}, got {self.kl_mode!r}")
        for name in ("tau_steps", "kl_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 iterations, got {getattr(self, name)}")
        if self.kl_weight < 0 or self.kl_start < 0:
            raise ValueError(f"kl_start and kl_weight must be >= 0, got {self.kl_start} and {self.kl_weight}")
        if self.tau_start <= 0 or self.tau_end <= 0:
            raise ValueError(f"tau_start and tau_end must be > 0, got {self.tau_start} and {self.tau_end}")
        if self.image_size % 2**self.downsamples:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^downsamples = {2**self.downsamples}")

    @property
    def grid(self) -> int:
        return self.image_size // 2**self.downsamples

    def tau(self, step: int) -> float:
        f = min(max(step, 0) / max(self.tau_steps, 1), 1.0)
        return self.tau_start + f * (self.tau_end - self.tau_start)

    def kl_lambda(self, step: int) -> float:
        """λ at ``step``: ``kl_weight`` throughout when ``kl_steps`` = 0, else kl_start → kl_weight
        linearly over ``kl_steps`` iterations, then ``kl_weight``."""
        if self.kl_steps == 0:
            return self.kl_weight
        f = min(max(step, 0) / self.kl_steps, 1.0)
        return self.kl_start + f * (self.kl_weight - self.kl_start)


class DVAE(Autoencoder):
    kind = "dvae"

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder(3, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, cfg.vocab_size)
        out = 6 if cfg.loss == "laplace" else 3  # laplace: mean and log-scale per channel
        self.decoder = decoder(cfg.vocab_size, cfg.hidden, cfg.downsamples, cfg.n_rd, cfg.n_rb, out)

    def _check(self, x: torch.Tensor) -> None:
        s = self.cfg.image_size
        check_shape(x, (None, 3, s, s), f"{self.kind} input")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.encoder(x)  # (B, V, h, w)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, S, S) → tokens (B, h, w), argmax, no noise."""
        return self.logits(x).argmax(dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        check_shape(tokens, (None, g, g), f"{self.kind} tokens")
        one_hot = F.one_hot(tokens.long(), self.cfg.vocab_size).permute(0, 3, 1, 2).float()  # (B, V, h, w)
        return self._pixels(self.decoder(one_hot))

    def _pixels(self, out: torch.Tensor) -> torch.Tensor:
        return out[:, :3]  # the decoder ends in a sigmoid: [0, 1]

    def forward(self, x: torch.Tensor, step: int, generator: torch.Generator | None = None) -> dict:
        """One training pass: loss terms, reconstruction and code-usage statistics."""
        logits = self.logits(x)  # (B, V, h, w)
        tau = self.cfg.tau(step)
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype).clamp_(1e-9, 1 - 1e-9)
        soft = F.softmax((logits - torch.log(-torch.log(u))) / tau, dim=1)  # Gumbel-softmax, (B, V, h, w)
        out = self.decoder(soft)
        recon = self._pixels(out)
        # losses in fp32 with autocast off: CUDA autocast refuses binary_cross_entropy outright
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.cfg.loss == "bce":
                rec = F.binary_cross_entropy(recon.float().clamp(1e-6, 1 - 1e-6), x.float())
            else:  # log-Laplace likelihood, DALL·E's choice for natural images
                mu, log_b = out[:, :3].float(), out[:, 3:].float() * 4 - 2
                rec = (torch.abs(x.float() - mu) * torch.exp(-log_b) + log_b + math.log(2)).mean()
        kl = usage_kl(logits, self.cfg.kl_mode)
        lam = self.cfg.kl_lambda(step)
        return {"loss": rec + lam * kl, "rec": rec.detach(), "kl": kl.detach(), "tau": tau, "lambda": lam, "recon": recon, **code_usage(logits.argmax(1), self.cfg.vocab_size)}
