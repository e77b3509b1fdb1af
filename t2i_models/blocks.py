"""The thesis' convolutional blocks and the encoder / decoder stacks built from them.

Encoder: ChangeChannels(3 → H/2^d) → d × [DownSampleX2 (doubling channels) + N_RD × Residual]
→ N_RB × Residual(H) → ChangeChannels(H → out). The decoder mirrors it from ``in`` channels and
ends in a sigmoid. Shapes in comments: (B, C, H, W).
"""
from __future__ import annotations

import torch
from torch import nn


def check_shape(x: torch.Tensor, expected: tuple, what: str) -> None:
    """Raise with both shapes; ``None`` in ``expected`` matches any size."""
    if x.dim() != len(expected) or any(e is not None and e != a for e, a in zip(expected, x.shape)):
        shown = tuple("*" if e is None else e for e in expected)
        raise ValueError(f"{what}: expected shape {shown}, got {tuple(x.shape)}")


class ChangeChannels(nn.Sequential):
    """conv3 + BN + ReLU + conv1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 1))


class DownSampleX2(nn.Sequential):
    """conv4 stride 2 pad 1 + BN + ReLU + conv3 + ReLU: (B, cin, H, W) → (B, cout, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UpSampleX2(nn.Sequential):
    """transposed conv4 stride 2 pad 1 + BN + ReLU + transposed conv3 + ReLU: H, W doubled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.ConvTranspose2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """x + conv1(ReLU(BN(conv3(ReLU(x)))))."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder(cin: int, hidden: int, downsamples: int, n_rd: int, n_rb: int, cout: int) -> nn.Sequential:
    if hidden % 2**downsamples:
        raise ValueError(f"hidden width {hidden} must be divisible by 2^downsamples = {2**downsamples}")
    c = hidden // 2**downsamples
    layers: list[nn.Module] = [ChangeChannels(cin, c)]
    for _ in range(downsamples):
        layers += [DownSampleX2(c, 2 * c)] + [Residual(2 * c) for _ in range(n_rd)]
        c *= 2
    layers += [Residual(c) for _ in range(n_rb)] + [ChangeChannels(c, cout)]
    return nn.Sequential(*layers)


def decoder(cin: int, hidden: int, upsamples: int, n_rd: int, n_rb: int, cout: int) -> nn.Sequential:
    c = hidden
    layers: list[nn.Module] = [ChangeChannels(cin, c)] + [Residual(c) for _ in range(n_rb)]
    for _ in range(upsamples):
        layers += [UpSampleX2(c, c // 2)] + [Residual(c // 2) for _ in range(n_rd)]
        c //= 2
    layers += [ChangeChannels(c, cout), nn.Sigmoid()]
    return nn.Sequential(*layers)


@torch.no_grad()
def init_output_bias(dec: nn.Sequential, x: torch.Tensor) -> None:
    """Set the last conv's bias of a decoder to logit(mean pixel per channel) of ``x``."""
    last = dec[-2][-1]  # ChangeChannels' final conv1, before the sigmoid
    m = x.float().mean(dim=(0, 2, 3)).clamp(1e-3, 1 - 1e-3)  # (3,)
    last.bias[:3] = torch.log(m / (1 - m)).to(last.bias.dtype)


@torch.no_grad()
def code_usage(tokens: torch.Tensor, vocab_size: int) -> dict:
    """Perplexity of the code histogram of ``tokens`` (any shape, int64 ids 0..V−1): exp of its
    entropy in nats, V when every code is used equally, 1 when one code takes all; and "used",
    the share of the V codes that occur. Both 0-dim fp32 tensors on the tokens' device.

    The histogram is a ``scatter_add_`` of ones and 0·log 0 is taken as 0 with ``torch.where``:
    no ``bincount`` (which reads its output size back to the host) and no boolean-mask indexing
    (whose output size is data-dependent), so a training step never waits on the GPU here."""
    flat = tokens.reshape(-1).long()
    usage = torch.zeros(vocab_size, dtype=torch.float32, device=tokens.device)
    usage.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))  # (V,)
    return usage_stats(usage)


def usage_stats(usage: torch.Tensor) -> dict:
    """``code_usage``'s two figures from a code histogram ``usage`` (V,) of counts (any float
    dtype; the figures come in it): perplexity exp(−Σ p log p) with 0·log 0 = 0, and "used", the
    share of codes with a count above 0. An empty histogram gives perplexity 1 and used 0."""
    p = usage / usage.sum().clamp(min=1.0)
    plogp = torch.where(p > 0, p * torch.log(p.clamp(min=1e-30)), torch.zeros_like(p))
    return {"perplexity": torch.exp(-plogp.sum()), "used": (usage > 0).to(usage.dtype).mean()}


class Autoencoder(nn.Module):
    """What the dVAE and the VQ-VAE share: a ``cfg`` dataclass and a ``decoder`` stack."""

    @torch.no_grad()
    def init_output_bias(self, x: torch.Tensor) -> None:
        """Start the output layer at the data's mean pixel instead of 0.5: the bias in front of the
        sigmoid would otherwise need thousands of optimizer steps to reach a mostly black (or
        mostly bright) background. Under torch.distributed every rank gets rank 0's bias, since
        each computes it from its own first batch."""
        init_output_bias(self.decoder, x)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(self.decoder[-2][-1].bias.data, 0)

    def config_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self.cfg)
