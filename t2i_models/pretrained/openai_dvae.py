"""OpenAI's DALL·E dVAE (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"; code: the
``dall-e`` package, ``dall_e/encoder.py``, ``decoder.py``, ``utils.py``), re-implemented with the
published parameter names so its published weights load as they are.

Why re-implemented: the ``dall-e`` package's declared requirements pull torchvision, which does
not import beside the torch this project is tested with, and its ``load_model`` unpickles whole
modules with a plain ``torch.load``. Its classes serve as the test oracle
(``tests/test_pretrained_openai_dvae.py``: identical logits, tokens and pixels on random-init
weights saved the way the published files are).

Architecture (the package's defaults, which the published files use):

- ``Conv2d``: parameters ``w`` (out, in, k, k) and ``b`` (out,), padding (k − 1) // 2; on CUDA a
  conv with ``use_float16`` runs in float16, as published (every conv but the encoder's output
  and the decoder's input); on the CPU all run in float32.
- Blocks: ``id_path`` (a 1×1 conv when the widths differ, else identity) + ``post_gain`` ·
  ``res_path``, post_gain = 1 / n_layers², n_layers = group_count · n_blk_per_group = 4 · 2 = 8;
  a block's hidden width is out / 4; each conv follows a ReLU.
- Encoder: ``blocks.input`` 7×7 conv 3 → n_hid (256); ``group_1``..``group_4`` of 2 blocks at
  widths 1, 2, 4, 8 × n_hid (256, 512, 1024, 2048), convs 3×3, 3×3, 3×3, 1×1; a 2×2 max-pool
  after groups 1–3; ``output``: ReLU, 1×1 conv → vocab_size (8192) logits. Tokens: argmax.
- Decoder: ``blocks.input`` 1×1 conv vocab_size → n_init (128); groups at 8, 4, 2, 1 × n_hid
  (2048, 1024, 512, 256), convs 1×1, 3×3, 3×3, 3×3; nearest ×2 upsampling after groups 1–3;
  ``output``: ReLU, 1×1 conv → 2 · 3 channels (the logit-Laplace location and scale); the image
  is ``unmap_pixels(sigmoid(first 3 channels))``.
- Pixels: ``map_pixels`` x ↦ (1 − 2ε) x + ε before the encoder, ``unmap_pixels`` its inverse
  clamped to [0, 1] (the package's own definition) after the decoder, ε = 0.1
  (``logit_laplace_eps``).
- Images are 256×256 → 32×32 tokens (the paper's setting; the convolutions take any multiple of
  8, and ``image_size`` is what ``t2i encode`` checks the views against).

The decoder's input conv is applied to one-hot codes as a row lookup of ``w`` plus ``b``
(``decode``): the conv of a one-hot vector adds one weight to exact zeros, so the lookup gives the
same floats (tested with ``torch.equal`` against the package) without the (B, 8192, 32, 32)
one-hot tensor (32 MiB per image).

Files ``--autoencoder`` takes (``LAYOUT``): the published ``encoder.pkl`` with ``decoder.pkl``
beside it (or the other way round), read by ``safe_load.restricted_load``: torch's
``weights_only`` unpickler with the ``dall_e`` classes these files hold mapped onto inert records;
or a state dict (``.pt`` / ``.pth`` / ``.bin`` read with ``weights_only``, or ``.safetensors``)
holding ``encoder.blocks.*`` and ``decoder.blocks.*``; or an encoder state dict (``blocks.*``)
whose file name starts with ``encoder`` with the decoder's (same name, ``decoder``) beside it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i_data.errors import T2IError

from ..weights import weights_fingerprint
from .safe_load import Pickled, file_sha256, read_state_dict, restricted_load, state_dict_of, state_dict_keys

KIND = "openai_dvae"
FORMAT = "openai-dvae"
LAYOUT = ("encoder.pkl with decoder.pkl beside it (the published files); a state dict (.pt/.pth/.bin/.safetensors) "
          "with encoder.blocks.* and decoder.blocks.*; or encoder.<ext> holding blocks.* with decoder.<ext> beside it")
LOGIT_LAPLACE_EPS = 0.1  # dall_e/utils.py
GROUP_COUNT = 4  # dall_e Encoder / Decoder: a class constant, not pickled
CLASSES = ("dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.decoder.Decoder", "dall_e.decoder.DecoderBlock",
           "dall_e.utils.Conv2d")
STATE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class OpenAIDVAEConfig:
    """The published dVAE's sizes (``dall_e`` defaults): vocab_size 8192 codes, n_hid 256 (both
    stacks), n_init 128 (the decoder's input width), 2 blocks per group, 4 groups (3 pooling /
    upsampling steps: grid = image_size / 8), 3 channels in and out, 256×256 images."""

    vocab_size: int = 8192
    enc_hid: int = 256
    dec_hid: int = 256
    dec_init: int = 128
    n_blk_per_group: int = 2
    input_channels: int = 3
    output_channels: int = 3
    image_size: int = 256

    def __post_init__(self) -> None:
        if self.image_size % 2 ** (GROUP_COUNT - 1):
            raise ValueError(f"image_size {self.image_size} is not a multiple of {2 ** (GROUP_COUNT - 1)}")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (GROUP_COUNT - 1)


class Conv2d(nn.Module):
    """``dall_e.utils.Conv2d``: ``w`` (n_out, n_in, kw, kw), ``b`` (n_out,), same padding."""

    def __init__(self, n_in: int, n_out: int, kw: int, use_float16: bool = True) -> None:
        super().__init__()
        self.kw, self.use_float16 = kw, use_float16
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw).normal_(std=1 / (n_in * kw**2) ** 0.5))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_float16 and self.w.device.type == "cuda":
            x, w, b = x.half(), self.w.half(), self.b.half()
        else:
            x, w, b = x.float(), self.w, self.b
        return F.conv2d(x, w, b, padding=(self.kw - 1) // 2)


class _Block(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]) -> None:
        super().__init__()
        if n_out % 4:
            raise ValueError(f"block width {n_out} is not a multiple of 4")
        hid = n_out // 4
        self.post_gain = 1 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [(n_in, hid), (hid, hid), (hid, hid), (hid, n_out)]
        layers = []
        for i, ((a, b), k) in enumerate(zip(widths, kernels), 1):
            layers += [(f"relu_{i}", nn.ReLU()), (f"conv_{i}", Conv2d(a, b, k))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class Encoder(nn.Module):
    """(B, 3, S, S) mapped pixels → (B, vocab_size, S/8, S/8) float logits."""

    def __init__(self, cfg: OpenAIDVAEConfig) -> None:
        super().__init__()
        h, n, layers = cfg.enc_hid, cfg.n_blk_per_group, GROUP_COUNT * cfg.n_blk_per_group
        widths = [(h, h), (h, 2 * h), (2 * h, 4 * h), (4 * h, 8 * h)]
        groups = [("input", Conv2d(cfg.input_channels, h, 7))]
        for g, (a, b) in enumerate(widths, 1):
            blocks = [(f"block_{i + 1}", _Block(a if i == 0 else b, b, layers, (3, 3, 3, 1))) for i in range(n)]
            if g < GROUP_COUNT:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{g}", nn.Sequential(OrderedDict(blocks))))
        groups.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", Conv2d(8 * h, cfg.vocab_size, 1, use_float16=False))]))))
        self.blocks = nn.Sequential(OrderedDict(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(B, vocab_size, h, w) one-hot codes → (B, 2 · 3, 8h, 8w) logit-Laplace parameters."""

    def __init__(self, cfg: OpenAIDVAEConfig) -> None:
        super().__init__()
        h, n, layers = cfg.dec_hid, cfg.n_blk_per_group, GROUP_COUNT * cfg.n_blk_per_group
        widths = [(cfg.dec_init, 8 * h), (8 * h, 4 * h), (4 * h, 2 * h), (2 * h, h)]
        groups = [("input", Conv2d(cfg.vocab_size, cfg.dec_init, 1, use_float16=False))]
        for g, (a, b) in enumerate(widths, 1):
            blocks = [(f"block_{i + 1}", _Block(a if i == 0 else b, b, layers, (1, 3, 3, 3))) for i in range(n)]
            if g < GROUP_COUNT:
                blocks.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
            groups.append((f"group_{g}", nn.Sequential(OrderedDict(blocks))))
        groups.append(("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", Conv2d(h, 2 * cfg.output_channels, 1))]))))
        self.blocks = nn.Sequential(OrderedDict(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int codes → the same output as ``forward(one_hot(tokens))``: the input conv as
        a row lookup of its weight (exact: see the module docstring)."""
        conv = self.blocks.input
        w = conv.w[:, :, 0, 0].t()  # (vocab, n_init)
        x = (F.embedding(tokens, w.float()) + conv.b.float()).permute(0, 3, 1, 2)
        for name, module in list(self.blocks.named_children())[1:]:
            x = module(x)
        return x


def map_pixels(x: torch.Tensor) -> torch.Tensor:
    return (1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS


def unmap_pixels(x: torch.Tensor) -> torch.Tensor:
    """The package's inverse of ``map_pixels``, clamped to [0, 1] as published."""
    return torch.clamp((x - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS), 0, 1)


class OpenAIDVAE(nn.Module):
    """The published dVAE as an autoencoder of this project (``pretrained`` interface): ``encode``
    (B, 3, S, S) float pixels in [0, 1] → (B, S/8, S/8) int64 codes (argmax of the logits, fp32 on
    the CPU); ``decode`` (B, h, w) codes → (B, 3, 8h, 8w) float pixels in [0, 1]."""

    kind = KIND

    def __init__(self, cfg: OpenAIDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.requires_grad_(False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels in [0, 1] → (B, vocab_size, S/8, S/8) encoder logits."""
        if x.ndim != 4 or x.shape[1] != self.cfg.input_channels:
            raise T2IError(f"OpenAI dVAE input must be (B, {self.cfg.input_channels}, S, S), got {tuple(x.shape)}")
        return self.encoder(map_pixels(x.float()))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).float().argmax(dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.decoder.from_tokens(tokens.long())
        return unmap_pixels(torch.sigmoid(out[:, : self.cfg.output_channels].float()))

    def config_dict(self) -> dict:
        return asdict(self.cfg)


# -- loading ---------------------------------------------------------------------------------------

def _partner(path: Path) -> Path:
    """decoder.<ext> beside encoder.<ext>, and the other way round."""
    name = path.name
    for a, b in (("encoder", "decoder"), ("decoder", "encoder")):
        if name.startswith(a):
            return path.with_name(b + name[len(a):])
    raise T2IError(f"{path}: an OpenAI dVAE half is named encoder.* or decoder.* (the published encoder.pkl / decoder.pkl), "
                   f"so its other half can be found beside it")


def claims(path: Path) -> bool:
    if path.suffix == ".pkl":
        return True
    if path.suffix not in STATE_SUFFIXES:
        return False
    keys = state_dict_keys(path)
    return "encoder.blocks.input.w" in keys or (path.name.startswith(("encoder", "decoder")) and "blocks.input.w" in keys)


# Bounds on the sizes a pickle states, far above the published model's (vocab 8192, n_hid 256,
# n_init 128, 2 blocks per group, 3 channels), so a wrong or hostile file is refused before a
# model of its size is built.
LIMITS = {"vocab_size": 1 << 20, "n_hid": 1 << 14, "n_init": 1 << 14, "n_blk_per_group": 64, "input_channels": 64, "output_channels": 64}


def _attr(rec: Pickled, name: str, where: Path):
    """The pickled object's attribute ``name``: an int in [1, ``LIMITS[name]``] for a size."""
    try:
        v = rec.state[name]
    except KeyError:
        raise T2IError(f"{where}: the pickled {rec.cls} has no {name!r}; not a file of the dall_e package") from None
    if name in LIMITS and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= LIMITS[name]):
        raise T2IError(f"{where}: the pickled {rec.cls} has {name} = {v!r}, not an integer in [1, {LIMITS[name]:,}]")
    return v


def _groups(rec: Pickled, where: Path) -> list[str]:
    """The names of the ``group_N`` children of the pickled module's ``blocks`` Sequential."""
    blocks = rec.children().get("blocks")
    if not isinstance(blocks, Pickled) or not isinstance(blocks.state.get("_modules"), dict):
        raise T2IError(f"{where}: the pickled {rec.cls} has no blocks Sequential; not a file of the dall_e package")
    return [n for n in blocks.children() if n.startswith("group_")]


def _from_pickles(enc_path: Path, dec_path: Path) -> tuple[OpenAIDVAEConfig, dict, dict]:
    """Config, state dict and per-conv float16 flags from the two pickled modules."""
    enc = restricted_load(enc_path, CLASSES, "OpenAI dVAE")
    dec = restricted_load(dec_path, CLASSES, "OpenAI dVAE")
    for rec, want, where in ((enc, "dall_e.encoder.Encoder", enc_path), (dec, "dall_e.decoder.Decoder", dec_path)):
        if not isinstance(rec, Pickled) or rec.cls != want:
            got = rec.cls if isinstance(rec, Pickled) else type(rec).__name__
            raise T2IError(f"{where}: holds a {got}, not a {want}; pass encoder.pkl with decoder.pkl beside it")
    for rec, where in ((enc, enc_path), (dec, dec_path)):
        groups = _groups(rec, where)
        if len(groups) != GROUP_COUNT:
            raise T2IError(f"{where}: {len(groups)} groups where the dall_e architecture has {GROUP_COUNT}")
    vocab = _attr(enc, "vocab_size", enc_path)
    if _attr(dec, "vocab_size", dec_path) != vocab:
        raise T2IError(f"{enc_path}: encoder has {vocab} codes but {dec_path.name} decodes {dec.vocab_size}; they are not one dVAE")
    if _attr(dec, "n_blk_per_group", dec_path) != _attr(enc, "n_blk_per_group", enc_path):
        raise T2IError(f"{enc_path}: encoder and decoder have different blocks per group; they are not one dVAE")
    try:
        cfg = OpenAIDVAEConfig(vocab_size=vocab, enc_hid=_attr(enc, "n_hid", enc_path), dec_hid=_attr(dec, "n_hid", dec_path),
                               dec_init=_attr(dec, "n_init", dec_path), n_blk_per_group=enc.n_blk_per_group,
                               input_channels=_attr(enc, "input_channels", enc_path), output_channels=_attr(dec, "output_channels", dec_path))
    except ValueError as e:
        raise T2IError(f"{enc_path}: {e}") from None
    sd = {f"encoder.{k}": v for k, v in state_dict_of(enc).items()} | {f"decoder.{k}": v for k, v in state_dict_of(dec).items()}
    fp16 = {}
    for prefix, rec in (("encoder", enc), ("decoder", dec)):
        _conv_flags(rec, prefix, fp16)
    return cfg, sd, fp16


def _conv_flags(rec, prefix: str, out: dict) -> None:
    if isinstance(rec, Pickled):
        if rec.cls == "dall_e.utils.Conv2d":
            out[prefix] = bool(rec.state.get("use_float16", True))
        for name, child in rec.children().items():
            _conv_flags(child, f"{prefix}.{name}", out)


def _config_from_state(sd: dict, where: Path) -> OpenAIDVAEConfig:
    """The sizes a state dict's shapes give (the published architecture's shape pattern)."""
    try:
        e_in, d_in, d_out = sd["encoder.blocks.input.w"], sd["decoder.blocks.input.w"], sd["decoder.blocks.output.conv.w"]
        e_out = sd["encoder.blocks.output.conv.w"]
        blocks = {k.split(".")[3] for k in sd if k.startswith("encoder.blocks.group_1.block_")}
    except KeyError as e:
        raise T2IError(f"{where}: no {e.args[0]} in the state dict; not an OpenAI dVAE (it holds {', '.join(sorted(sd)[:4])}, ...)") from None
    return OpenAIDVAEConfig(vocab_size=e_out.shape[0], enc_hid=e_in.shape[0], dec_hid=d_out.shape[1], dec_init=d_in.shape[0],
                            n_blk_per_group=len(blocks), input_channels=e_in.shape[1], output_channels=d_out.shape[0] // 2)


def load(path: Path, map_location: str = "cpu"):
    """(OpenAIDVAE in eval mode, record) from the published pickles or a state dict (``LAYOUT``).
    Raises ``T2IError`` for a missing half, a refused global, or weights that do not fit."""
    path = Path(path)
    if not path.is_file():
        raise T2IError(f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'} (OpenAI dVAE: nothing is downloaded; "
                       f"put the published encoder.pkl and decoder.pkl there)")
    fp16 = {}
    if path.suffix == ".pkl":
        other = _partner(path)
        enc_path, dec_path = (path, other) if path.name.startswith("encoder") else (other, path)
        if not other.is_file():
            raise T2IError(f"{path}: the OpenAI dVAE's other half {other.name} is not beside it ({other}); "
                           f"both encoder.pkl and decoder.pkl are needed")
        cfg, sd, fp16 = _from_pickles(enc_path, dec_path)
        files = [enc_path, dec_path]
    else:
        sd = read_state_dict(path, "OpenAI dVAE")
        files = [path]
        if "encoder.blocks.input.w" not in sd:
            other = _partner(path)
            if not other.is_file():
                raise T2IError(f"{path}: holds one half of an OpenAI dVAE; its other half {other.name} is not beside it ({other})")
            mine = "encoder" if path.name.startswith("encoder") else "decoder"
            halves = {mine: sd, ({"encoder", "decoder"} - {mine}).pop(): read_state_dict(other, "OpenAI dVAE")}
            sd = {f"{half}.{k}": v for half in ("encoder", "decoder") for k, v in halves[half].items()}
            files.append(other)
        cfg = _config_from_state(sd, path)
    try:
        with torch.device("meta"):  # no random init of ~100M parameters that the file's weights replace
            model = OpenAIDVAE(cfg)
    except ValueError as e:  # sizes the architecture cannot take (a block width not a multiple of 4)
        raise T2IError(f"{path}: {e}; not the OpenAI dVAE architecture") from None
    for name, m in model.named_modules():
        if isinstance(m, Conv2d) and name in fp16:
            m.use_float16 = fp16[name]
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:
        raise T2IError(f"{path}: its weights do not fit the OpenAI dVAE architecture ({' '.join(str(e).split())[:300]})") from None
    model = model.to(map_location).eval()
    record = {"format": FORMAT, "kind": KIND, "config": asdict(cfg), "fingerprint": weights_fingerprint(model),
              "source": {"files": {f.name: file_sha256(f) for f in files}}}
    return model, record
