"""taming-transformers' VQGAN (Esser, Rombach, Ommer 2021, "Taming Transformers for
High-Resolution Image Synthesis"; code: github.com/CompVis/taming-transformers,
``taming/models/vqgan.py`` ``VQModel``, ``taming/modules/diffusionmodules/model.py`` ``Encoder`` /
``Decoder``, ``taming/modules/vqvae/quantize.py``), re-implemented with the published parameter
names so its published checkpoints load as they are: the ImageNet f16-1024 and f16-16384 models
(README, "VQGAN ImageNet (f=16), 1024 / 16384").

Why re-implemented: the ``taming-transformers`` 0.0.1 wheel declares torchvision,
pytorch-lightning and omegaconf as requirements; torchvision pins one torch release, so pip
replaces the installed torch (a dry run beside torch 2.13.0+cpu resolves torchvision 0.29.1 with
torch 2.14.1). And its ``VQModel`` is a LightningModule that builds the LPIPS/discriminator loss
(downloading VGG weights) when it is constructed. The wheel's ``Encoder``, ``Decoder`` and
``VectorQuantizer`` are the test oracle (``tests/test_pretrained_vqgan.py``: identical latents,
tokens and pixels, ``torch.equal``).

Architecture (``ddconfig``, all from the YAML; the defaults of ``TamingVQGANConfig`` are the
published f16 models', ``configs/imagenet_vqgan.yaml`` and the downloads' ``model.yaml``):
ch 128, ch_mult (1, 1, 2, 2, 4) (4 downsamplings: f = 16), 2 ResnetBlocks per level, attention
at resolution 16, z_channels = embed_dim = 256, double_z false, resolution 256 → a 16×16 grid,
n_embed 1024 or 16384. GroupNorm(32 groups, eps 1e-6), swish x·sigmoid(x); ResnetBlock
norm-swish-conv3 twice with a 1×1 ``nin_shortcut`` where the widths differ; AttnBlock: 1×1
``q``/``k``/``v``/``proj_out``, softmax(qᵀk / √c); Downsample: zero pad (0, 1, 0, 1) then a 3×3
stride-2 conv; Upsample: nearest ×2 then a 3×3 conv. ``quant_conv`` / ``post_quant_conv`` are
1×1 convs between z_channels and embed_dim; the codebook is ``quantize.embedding`` (n_embed,
embed_dim).

Pixels, as the repository's own pre- and post-processing (``preprocess_vqgan`` 2x − 1 in its
notebooks; data loaders ``image / 127.5 − 1``; ``custom_to_pil`` / ``ImageLogger``: clamp to
[−1, 1] then (x + 1) / 2): ``encode`` maps [0, 1] to [−1, 1]; ``decode`` clamps the decoder's
output to [−1, 1] and maps it back to [0, 1]. That clamp is taming's published post-processing,
not one added here. Tokens: argmin of the reference's own distance ‖z‖² + ‖e‖² − 2 z·e (not
(z − e)², which rounds differently); decoding looks codewords up by index (the one-hot matmul of
the old ``get_codebook_entry`` gives the same floats).

Precision: fp32 throughout (autocast is switched off inside ``encode`` / ``decode``); the test
holds CPU results bit-equal to the reference. On CUDA the convolutions follow torch's TF32 setting
for cuDNN, as the reference's would. Memory: the distance matrix is (B·h·w, n_embed) fp32, 1 GiB
for 64 images of 16×16 codes at 16384 codes, as in the reference.

Files ``--autoencoder`` takes (``LAYOUT``): the published ``last.ckpt`` (a PyTorch Lightning 1.0
checkpoint: ``state_dict`` plus ``epoch``, ``global_step``, ``callbacks``, ``optimizer_states``,
...) read by ``safe_load.restricted_load``; or a state dict (``.safetensors``, or ``.pt`` /
``.pth`` / ``.bin``) with the same names; each with its YAML as ``<stem>.yaml`` or ``model.yaml``
beside it, or ``../configs/model.yaml`` (the downloads' ``ckpts/last.ckpt`` + ``configs/model.yaml``).
The only class a published checkpoint pickles is the key of ``callbacks``: Lightning before 1.5
keys each callback's state by its class (``trainer/callback_hook.py``, read in 1.0.8, the version
taming pins; taming's trainer always adds a ModelCheckpoint, whose state is a score tensor and a
path). VQModel saves no hyper-parameters, so no Namespace or omegaconf class appears; anything
else stops the load with one message naming it. Everything but ``state_dict`` is ignored; the
``loss.*`` tensors (LPIPS and discriminator, training only) are dropped and counted in the record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from t2i_data.errors import T2IError

from ..blocks import check_shape
from ..weights import weights_fingerprint
from .safe_load import file_sha256, read_state_dict, restricted_load

KIND = "taming_vqgan"
FORMAT = "taming-vqgan"
TARGET = "taming.models.vqgan.VQModel"
LAYOUT = ("a taming-transformers VQModel last.ckpt (or a .safetensors/.pt state dict of it) with its YAML as "
          "<stem>.yaml or model.yaml beside it or ../configs/model.yaml (the published ckpts/ + configs/ layout)")
# what the published Lightning checkpoints pickle besides torch's own types (see the docstring)
CKPT_CLASSES = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",)
STATE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# VQModel.__init__ parameters that only matter for training or logging
TRAINING_PARAMS = {"lossconfig", "ckpt_path", "ignore_keys", "image_key", "monitor", "sane_index_shape"}


# Bounds on the YAML's sizes, far above any published VQGAN (f16-16384: n_embed 16384, ch 128, z 256,
# resolution 256), so a wrong or hostile YAML is refused before a model of its size is built.
MAX_SIZE = {"vocab_size": 1 << 20, "embed_dim": 1 << 14, "ch": 1 << 12, "resolution": 1 << 14, "z_channels": 1 << 14}


@dataclass(frozen=True)
class TamingVQGANConfig:
    vocab_size: int = 16384  # n_embed
    embed_dim: int = 256
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    dropout: float = 0.0
    resamp_with_conv: bool = True
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False

    def __post_init__(self) -> None:
        for name in ("ch_mult", "attn_resolutions"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or not all(isinstance(m, int) and not isinstance(m, bool) for m in v):
                raise ValueError(f"{name} must be a list of integers, got {v!r}")
            object.__setattr__(self, name, tuple(v))
        for name in ("vocab_size", "embed_dim", "ch", "resolution", "z_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE[name]:
                raise ValueError(f"{'n_embed' if name == 'vocab_size' else name} must be an integer in [1, {MAX_SIZE[name]:,}], got {v!r}")
        if not isinstance(self.num_res_blocks, int) or isinstance(self.num_res_blocks, bool) or not 0 <= self.num_res_blocks <= 16:
            raise ValueError(f"num_res_blocks must be an integer in [0, 16], got {self.num_res_blocks!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        for name in ("resamp_with_conv", "double_z"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.in_channels != 3 or self.out_ch != 3:
            raise ValueError(f"in_channels and out_ch must be 3 (RGB images), got {self.in_channels} and {self.out_ch}")
        if self.double_z:
            raise ValueError("double_z must be false: VQModel's quant_conv takes z_channels, not 2·z_channels")
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 or self.ch * m % 32 for m in (1, *self.ch_mult)):
            raise ValueError(f"ch ({self.ch}) times every ch_mult entry {list(self.ch_mult)} must be a multiple of 32 (GroupNorm's 32 groups)")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^(len(ch_mult) - 1) = {2 ** (len(self.ch_mult) - 1)}")

    @property
    def grid(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.resolution


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # written as the reference does: F.silu rounds differently


def norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float, conv_shortcut: bool = False) -> None:
        super().__init__()  # taming's Encoder/Decoder never set conv_shortcut: their shortcuts are 1×1
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.dropout, self.conv2 = norm(cout), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(cin, cout, 3, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "conv_shortcut"):
            x = self.conv_shortcut(x)
        elif hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        w_ = torch.bmm(q.reshape(b, c, h * w).permute(0, 2, 1), k.reshape(b, c, h * w))  # (B, hw, hw)
        w_ = F.softmax(w_ * (int(c) ** (-0.5)), dim=2)
        h_ = torch.bmm(v.reshape(b, c, h * w), w_.permute(0, 2, 1)).reshape(b, c, h, w)  # (B, c, hw) → (B, c, h, w)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    def __init__(self, c: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))  # torch convs pad symmetrically only
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Upsample(nn.Module):
    def __init__(self, c: int, with_conv: bool) -> None:
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class _Level(nn.Module):
    """One resolution: ``block`` / ``attn`` lists (attention after each block at the listed
    resolutions) and a ``downsample`` or ``upsample``, as taming's nn.Module() containers."""

    def __init__(self, blocks: list, attn: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList([AttnBlock(b.conv2.out_channels) for b in blocks] if attn else [])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int, dropout: float) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c, dropout), AttnBlock(c), ResnetBlock(c, c, dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, 3, S, S) in [−1, 1] → (B, z_channels, S/f, S/f)."""

    def __init__(self, cfg: TamingVQGANConfig) -> None:
        super().__init__()
        n, res = len(cfg.ch_mult), cfg.resolution
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        mult_in = (1, *cfg.ch_mult)
        for i in range(n):
            cin, cout = cfg.ch * mult_in[i], cfg.ch * cfg.ch_mult[i]
            level = _Level([ResnetBlock(cin if j == 0 else cout, cout, cfg.dropout) for j in range(cfg.num_res_blocks)],
                           res in cfg.attn_resolutions)
            if i != n - 1:
                level.downsample = Downsample(cout, cfg.resamp_with_conv)
                res //= 2
            self.down.append(level)
        c = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(c, cfg.dropout)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """(B, z_channels, S/f, S/f) → (B, 3, S, S), unbounded (≈ [−1, 1])."""

    def __init__(self, cfg: TamingVQGANConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c, res = cfg.ch * cfg.ch_mult[-1], cfg.grid
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(c, cfg.dropout)
        levels = {}
        for i in reversed(range(n)):
            cout = cfg.ch * cfg.ch_mult[i]
            level = _Level([ResnetBlock(c if j == 0 else cout, cout, cfg.dropout) for j in range(cfg.num_res_blocks + 1)],
                           res in cfg.attn_resolutions)
            c = cout
            if i != 0:
                level.upsample = Upsample(c, cfg.resamp_with_conv)
                res *= 2
            levels[i] = level
        self.up = nn.ModuleList(levels[i] for i in range(n))  # up.0 is the full resolution, as taming's insert(0, ...)
        self.norm_out = norm(c)
        self.conv_out = nn.Conv2d(c, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class _Quantize(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)


class TamingVQGAN(nn.Module):
    kind = KIND

    def __init__(self, cfg: TamingVQGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = _Quantize(cfg.vocab_size, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, S, S) → pre-quantisation latents (B, embed_dim, h, w)."""
        s = self.cfg.image_size
        check_shape(x, (None, 3, s, s), f"{self.kind} input")
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.quant_conv(self.encoder(2.0 * x.float() - 1.0))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, 3, S, S) → tokens (B, h, w) int64: the nearest codeword."""
        z = self.latents(x)
        b, e, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).contiguous().view(-1, e)  # (B·h·w, e)
        with torch.autocast(device_type=x.device.type, enabled=False):
            emb = self.quantize.embedding.weight  # (V, e)
            d = torch.sum(flat ** 2, dim=1, keepdim=True) + torch.sum(emb ** 2, dim=1) - 2 * torch.matmul(flat, emb.t())
        return torch.argmin(d, dim=1).view(b, h, w)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, h, w) → images (B, 3, S, S) in [0, 1], after taming's published
        post-processing clamp(−1, 1) then (x + 1) / 2."""
        g, v = self.cfg.grid, self.cfg.vocab_size
        check_shape(tokens, (None, g, g), f"{self.kind} tokens")
        tokens = tokens.long()
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= v):
            raise ValueError(f"{self.kind} tokens must lie in [0, {v}), got [{int(tokens.min())}, {int(tokens.max())}]")
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            zq = F.embedding(tokens, self.quantize.embedding.weight).permute(0, 3, 1, 2).contiguous()  # (B, e, h, w)
            x = self.decoder(self.post_quant_conv(zq))
        return (torch.clamp(x, -1.0, 1.0) + 1.0) / 2.0


def _yaml_candidates(path: Path) -> list[Path]:
    here = path.parent
    out = [here / f"{path.stem}.yaml", here / "model.yaml", here.parent / "configs" / "model.yaml"]
    return list(dict.fromkeys(out))  # a file named model.* gives model.yaml once


def _read_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise T2IError(f"{path}: not a readable YAML file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise T2IError(f"{path}: no 'model' section; a taming config has model.target and model.params")
    return doc


def find_yaml(path: Path) -> Path:
    """The YAML of a checkpoint or state dict: the first of ``_yaml_candidates`` that exists.
    Raises ``T2IError`` naming every place looked, or the files when two that exist differ."""
    found = [p for p in _yaml_candidates(path) if p.is_file()]
    if not found:
        raise T2IError(f"{path}: no taming config found (looked for {', '.join(str(p) for p in _yaml_candidates(path))}); "
                       f"put the model's YAML beside it as model.yaml")
    models = [_read_yaml(p)["model"] for p in found]
    if any(m != models[0] for m in models[1:]):
        raise T2IError(f"{path}: {' and '.join(str(p) for p in found)} describe different models; keep the one that belongs to it")
    return found[0]


def claims(path: Path) -> bool:
    """A ``.ckpt``; or a state dict whose YAML (found as ``find_yaml`` does) names a taming model
    (any ``taming.*`` target is claimed, so that ``load`` can name an unsupported one)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return True
    if path.suffix not in STATE_SUFFIXES:
        return False
    for p in _yaml_candidates(path):
        try:
            target = yaml.safe_load(p.read_text())["model"]["target"] if p.is_file() else None
        except Exception:  # not a taming YAML: the caller's own error names the file
            continue
        if isinstance(target, str) and target.startswith("taming."):
            return True
    return False


def config_from_yaml(doc: dict, where: Path) -> TamingVQGANConfig:
    """The architecture of ``model.params`` of a taming YAML whose target is ``TARGET``."""
    model = doc["model"]
    target = model.get("target")
    if target != TARGET:
        raise T2IError(f"{where}: model.target is {target!r}; only {TARGET} (the VQGAN with a nearest-codeword quantizer) "
                       f"is supported, not GumbelVQ, EMAVQ or other taming models")
    params = model.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise T2IError(f"{where}: model.params.ddconfig is missing")
    if params.get("remap") is not None:
        raise T2IError(f"{where}: model.params.remap is set ({params['remap']!r}): its tokens index a remapped subset "
                       f"of the codebook, which this loader does not support")
    if params.get("colorize_nlabels") is not None:
        raise T2IError(f"{where}: model.params.colorize_nlabels is set: a segmentation-map VQGAN, not an RGB image tokenizer")
    known = {"ddconfig", "n_embed", "embed_dim", "remap", "colorize_nlabels"} | TRAINING_PARAMS
    unknown = sorted(set(params) - known)
    if unknown:
        raise T2IError(f"{where}: model.params has {', '.join(unknown)}, which VQModel does not take (it takes {', '.join(sorted(known))})")
    dd = dict(params["ddconfig"])
    if dd.pop("give_pre_end", False):
        raise T2IError(f"{where}: ddconfig.give_pre_end is true: that decoder returns features, not images")
    names = {f.name for f in fields(TamingVQGANConfig)} - {"vocab_size", "embed_dim"}
    unknown = sorted(set(dd) - names)
    if unknown:
        raise T2IError(f"{where}: ddconfig has {', '.join(unknown)}, which taming's Encoder/Decoder do not use "
                       f"(known: {', '.join(sorted(names))}); is it a config of another codebase?")
    missing = sorted({"ch", "out_ch", "num_res_blocks", "attn_resolutions", "in_channels", "resolution", "z_channels",
                      "n_embed", "embed_dim"} - set(dd) - set(params))
    if missing:
        raise T2IError(f"{where}: {', '.join(missing)} missing from model.params / ddconfig")
    # taming's own defaults for the ddconfig fields a YAML may leave out (Encoder.__init__)
    dd = {"ch_mult": (1, 2, 4, 8), "dropout": 0.0, "resamp_with_conv": True, "double_z": True, **dd}
    try:
        return TamingVQGANConfig(vocab_size=params["n_embed"], embed_dim=params["embed_dim"], **dd)
    except (ValueError, TypeError) as e:
        raise T2IError(f"{where}: {e}") from None


def _state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        return read_state_dict(path, "taming VQGAN")
    ck = restricted_load(path, CKPT_CLASSES, "taming VQGAN checkpoint")
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise T2IError(f"{path}: holds no state dict (names → tensors) of a taming VQGAN")
    return dict(sd)


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def load(path: Path, map_location: str = "cpu"):
    """(TamingVQGAN in eval mode, record) from a checkpoint or state dict and its YAML (``LAYOUT``).
    Raises ``T2IError`` for a missing or unsupported YAML, a refused global, or weights that do
    not fit the YAML's architecture."""
    path = Path(path)
    if not path.is_file():
        raise T2IError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'} (taming VQGAN)")
    yaml_path = find_yaml(path)
    cfg = config_from_yaml(_read_yaml(yaml_path), yaml_path)
    sd = _state_dict(path)
    n_loss = sum(k.startswith("loss.") for k in sd)
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    with torch.device("meta"):  # shapes only: the file's weights are assigned below, nothing is drawn or allocated first
        model = TamingVQGAN(cfg)
    want = model.state_dict()
    unexpected, missing = set(sd) - set(want), set(want) - set(sd)
    if unexpected or missing:
        parts = [f"unexpected {_names(unexpected)}"] if unexpected else []
        parts += [f"missing {_names(missing)}"] if missing else []
        hint = (" (quantize.used: a remapped codebook, not supported)" if "quantize.used" in unexpected else "")
        raise T2IError(f"{path}: its weights are not those of the VQModel {yaml_path.name} describes: {'; '.join(parts)}{hint}")
    for name, t in want.items():
        if sd[name].shape != t.shape:
            raise T2IError(f"{path}: {name} has shape {tuple(sd[name].shape)} but {yaml_path.name} gives {tuple(t.shape)}")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    model = model.to(map_location).eval()
    record = {"format": FORMAT, "kind": KIND, "config": asdict(cfg), "fingerprint": weights_fingerprint(model),
              "source": {"files": {f.name: file_sha256(f) for f in (path, yaml_path)}, "loss_keys_dropped": n_loss}}
    return model, record
