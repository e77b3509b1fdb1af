"""The VQ-VAE study's perceptual reconstruction loss (seeds/001, §2): MSE between the features
that a frozen ResNet-18 (``resnet.py``, ImageNet weights from a local file) gives for the
reconstruction and for the original, in place of the pixel MSE.

    L_perc(x̂, x) = Σ_l w_l · mean((φ_l(x̂) − φ_l(x))²)

φ_l: ResNet-18's output at layer l ("layer1".."layer4", "fc"), images ImageNet-normalised inside
the network. The study tried one layer at a time: "the last layer, which is the classification
linear layer" (``fc``; its reconstructions "look like noise") and then "the second layer of
ResNet 18" (read here as ``layer2``, the second residual stage; better, "still extremely noisy"),
and finally kept the pixel MSE. It gives no weights (each run used one layer, weight 1) and names
combining layers as future work; ``DEFAULT_LAYERS`` is its better perceptual run, layer2 alone
at weight 1, and ``perceptual_layers`` sets any weighted combination.

The ResNet stays in eval mode (BatchNorm on its ImageNet running statistics) with
``requires_grad`` off on every weight, so gradients reach the reconstruction (and through it the
VQ-VAE) but never the ResNet, and no optimizer holds it. The original's features are computed
without a graph. The loss is computed in fp32 (outside any autocast).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i_data.errors import T2IError

from .resnet import FEATURES, ResNet18, load_resnet18

LOSSES = ("mse", "perceptual")  # train_autoencoder's ``loss``: pixel MSE (the study's final choice) or this
DEFAULT_LAYERS = {"layer2": 1.0}  # the study's better perceptual run (seeds/001 §2); see the module docstring


class PerceptualLoss(nn.Module):
    """``forward(recon, target)``: both (B, 3, H, W) in [0, 1] → 0-dim fp32 loss, Σ_l w_l MSE_l.
    ``layers`` maps names of ``resnet.FEATURES`` to weights > 0."""

    def __init__(self, net: ResNet18, layers: dict[str, float] | None = None) -> None:
        super().__init__()
        self.layers = dict(DEFAULT_LAYERS if layers is None else layers)
        problem = layers_problem(self.layers)
        if problem:
            raise ValueError(problem)
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """The ResNet stays in eval mode whatever the caller sets: its BatchNorm must use the
        ImageNet running statistics, not the reconstructions' batch statistics."""
        super().train(mode)
        self.net.eval()
        return self

    def per_layer(self, recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """{layer: mean squared feature difference} (0-dim fp32 each), unweighted."""
        if recon.shape != target.shape:
            raise ValueError(f"perceptual loss: reconstruction {tuple(recon.shape)} and original {tuple(target.shape)} differ")
        names = tuple(self.layers)
        with torch.autocast(device_type=recon.device.type, enabled=False):
            with torch.no_grad():
                want = self.net.features(target.float(), names)
            got = self.net.features(recon.float(), names)
            return {n: F.mse_loss(got[n], want[n]) for n in names}

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.per_layer(recon, target)
        return sum(self.layers[n] * v for n, v in parts.items())


def layers_problem(layers) -> str | None:
    """Why ``layers`` is not a {ResNet-18 feature name: weight > 0} mapping, or None."""
    if not isinstance(layers, dict) or not layers:
        return f"perceptual_layers needs a table of ResNet-18 layers and weights, e.g. {{layer2 = 1.0}}; got {layers!r}"
    unknown = [k for k in layers if k not in FEATURES]
    if unknown:
        return f"perceptual_layers: {', '.join(map(repr, unknown))} not a ResNet-18 layer; known: {', '.join(FEATURES)}"
    bad = [f"{k}={v!r}" for k, v in layers.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0]
    if bad:
        return f"perceptual_layers: weights must be finite numbers > 0, got {', '.join(bad)}"
    return None


def check_loss_settings(loss: str, weights: str, layers: dict) -> None:
    """The training config's reconstruction-loss settings, checked before anything runs:
    ``T2IError`` for an unknown ``loss``, ``perceptual`` without ``perceptual_weights``, weights
    given to the pixel MSE (they would be ignored), or a bad ``perceptual_layers`` table."""
    if loss not in LOSSES:
        raise T2IError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "perceptual" and not weights:
        raise T2IError("loss=perceptual needs perceptual_weights=PATH: a local torchvision ResNet-18 state dict "
                       "(resnet18-f37072fd.pth, ImageNet); nothing is downloaded")
    if loss == "mse" and weights:
        raise T2IError(f"perceptual_weights={weights} is only read with loss=perceptual; drop it, or set loss=perceptual")
    problem = layers_problem(layers)
    if problem:
        raise T2IError(problem)


def perceptual_from_file(path: str | Path, layers: dict | None = None, device="cpu") -> tuple[PerceptualLoss, dict]:
    """(PerceptualLoss on ``device``, its record {"loss": "perceptual", "layers", "resnet18_sha256",
    "resnet18_file"}) from a local ResNet-18 state dict; ``T2IError`` for a file that is not one."""
    net, sha = load_resnet18(path)
    loss = PerceptualLoss(net, layers).to(device)
    return loss, {"loss": "perceptual", "layers": dict(loss.layers), "resnet18_sha256": sha, "resnet18_file": Path(path).name}


def training_rec_loss(cfg, model, device) -> tuple[PerceptualLoss | None, dict]:
    """The trainer's reconstruction loss for its config ``cfg`` (``loss``, ``perceptual_weights``,
    ``perceptual_layers``): (None, {"loss": "mse"}) for the pixel MSE, else (PerceptualLoss,
    ``perceptual_from_file``'s record), which the checkpoint stores as ``rec_loss``. ``T2IError``
    for a perceptual loss on a model whose forward has no ``rec_loss`` (only the VQ-VAEs have one)."""
    from .vqvae import VQVAE

    if cfg.loss == "mse":
        return None, {"loss": "mse"}
    if not isinstance(model, VQVAE):
        raise T2IError(f"loss=perceptual: {cfg.arch} is a {model.kind}; the perceptual loss replaces the pixel MSE of a "
                       f"VQ-VAE (vqvae_study128, vqvae_study_tiny, vqvae_*): use one of those, or loss=mse")
    return perceptual_from_file(cfg.perceptual_weights, cfg.perceptual_layers, device)


def check_resumed_rec_loss(ck: dict, record: dict, where) -> None:
    """``T2IError`` when a resumed checkpoint ``ck`` was trained with another reconstruction loss
    (kind, layers and weights, or ResNet-18 file by sha256) than ``record``; checkpoints from
    before the record was kept were trained with the pixel MSE."""
    was = ck.get("rec_loss", {"loss": "mse"})
    keys = ("loss", "layers", "resnet18_sha256")
    if any(was.get(k) != record.get(k) for k in keys):
        show = lambda r: ", ".join(f"{k}={r[k]}" for k in keys if k in r)  # noqa: E731
        raise T2IError(f"{where} was trained with {show(was)}; this run asks for {show(record)}: resume with the same loss "
                       f"settings, or start fresh with another out=")
