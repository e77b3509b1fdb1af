"""The regression baselines of the Transformer/VAE study (seed 000: Kumar & Adeli, "A Picture is Worth
a Thousand Words: Using Cross-Modal Transformers and Variational AutoEncoders to Generate Images from
Text", ../shared/seeds/000_dc819bdd5a83b96c.txt): a caption's text embedding regressed onto a VQ-VAE's
continuous latent by a stack of fully connected layers, and its Siamese-triplet variant.

- ``Regressor`` without a head (``mode = "mlp"``, §"BERT Encoder with VQ-VAE"): "we mean-pool and
  concatenate the output of four distinct layers ... a vector of size 4096" (BERT-large: 4 × 1024,
  the text-embedding set's manifest gives D), then "eight fully connected layers. The first seven
  layers were all 4096 to 4096, while the last layer reformed this into the image feature vector of
  size 131,072". Layer 1 is D → 4096 (4096 → 4096 at the study's D), layers 2..7 are 4096 → 4096,
  layer 8 is 4096 → the latent size. The seed names no activation or normalisation: ReLU after
  each of the first seven layers and none after the last (the latent is unbounded), no
  normalisation — our choice, the plainest reading of "fully connected layers".
- ``Regressor`` with a head (``mode = "siamese"``, §"Siamese-BERT with VQ-VAE"): the seed replaces
  the encoder by "a siamese-triplet BERT encoder" (Reimers & Gurevych 2019) whose "output ... is a
  vector of size 768", then "another fully connected network" to the latent. This trainer reads
  precomputed embeddings, so it cannot fine-tune BERT itself: the Siamese part here is a shared-
  weights linear head D → 768 (``head_dim``, the seed's 768) applied to the anchor, positive and
  negative captions and trained with Sentence-BERT's triplet objective (Reimers & Gurevych §3:
  max(‖s_a − s_p‖ − ‖s_a − s_n‖ + ε, 0), Euclidean distance, margin ε = 1), and the same MLP as
  above from 768 to the latent. The MLP reads the head's output detached (``train_regress``), so
  the head is shaped by the triplet loss alone, as the seed's encoder was trained before the
  regression; both train in one run. Feed it Sentence-BERT embeddings (768, mean pooling) to stay
  closest to the seed.

Target (what is regressed): the seed trains the network "to generate vectors in the VQ-VAE's latent
space" and decodes them "with the VQ-VAE decoder"; with image-token shards the latent the decoder
reads is exactly the quantised one, z_q = codebook[tokens] (``LatentSpace.target``), laid out as
the decoder's input (D, h, w) flattened channel-first. The study's 131,072 = 32 × 32 × 128: a
128 × 128 image, two downsamplings (van den Oord et al. 2017 §4.1's 128 → 32 on ImageNet) and D = 128
(``pipelines/regress-coco.toml``). A dVAE has no codebook vectors (its decoder reads one-hot codes)
and a VQ-VAE-2 has two grids: both are refused with one line.

Histograms (seed Figure 3): cosine similarity and MSE between pairs of similar captions (two
captions of the same COCO image) and dissimilar ones ("sentences that do not have any words in
common"; without caption texts: captions of two different images), "after the transformer" (top
row: the embedding the MLP reads) and "after the fully connected layers" (bottom row: the predicted
latents). ``pair_values`` computes both for a list of pairs; ``regress_eval`` draws them.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_data.errors import T2IError
from t2i_data.rng import key_ids, stream_id, uniform_int

MODES = ("mlp", "siamese")
STUDY_HEAD = 768  # seed: "The output of this BERT encoder is a vector of size 768" (Sentence-BERT base)
STUDY_MARGIN = 1.0  # Reimers & Gurevych 2019 §3, triplet objective: Euclidean distance, margin ε = 1 (the seed gives none)


@dataclass(frozen=True)
class RegressConfig:
    """One regressor's sizes. ``in_dim`` D comes from the text-embedding set (manifest
    ``text_encoder.dim``), ``out_dim`` from the autoencoder (D_code · h · w); ``head_dim`` > 0 adds
    the Siamese head (D → head_dim, the MLP then reads head_dim). ``ValueError`` for a size < 1
    (``head_dim`` < 0)."""
    in_dim: int = 4096  # seed: four BERT layers mean-pooled and concatenated, "a vector of size 4096"
    out_dim: int = 131072  # seed: "the VQ-VAE latent vector of size 131072"
    hidden: int = 4096  # seed: "The first seven layers were all 4096 to 4096"
    layers: int = 7  # seed: seven hidden layers, then the eighth to the latent ("eight fully connected layers")
    head_dim: int = 0  # 0: mode mlp; siamese: 768 (STUDY_HEAD)

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_dim < 0:
            raise ValueError(f"head_dim must be >= 0 (0: no Siamese head), got {self.head_dim}")


CONFIGS = {
    "regress_study": RegressConfig(),  # the seed's 8-layer MLP (module docstring)
    "regress_tiny": RegressConfig(in_dim=32, out_dim=64, hidden=32, layers=2),  # tests and smoke runs
}


def param_count(cfg: RegressConfig) -> int:
    """Weights + biases of ``Regressor(cfg)`` by the layer arithmetic, without building it:
    head D·H' + H' (if any), layer 1 in·h + h, layers 2..L (L − 1)(h² + h), last h·out + out.
    The study at D = 4096, out 131,072: 7 × 16,781,312 + 537,001,984 = 654,471,168."""
    d = cfg.head_dim or cfg.in_dim
    head = cfg.in_dim * cfg.head_dim + cfg.head_dim if cfg.head_dim else 0
    return head + d * cfg.hidden + cfg.hidden + (cfg.layers - 1) * (cfg.hidden ** 2 + cfg.hidden) + cfg.hidden * cfg.out_dim + cfg.out_dim


class Regressor(nn.Module):
    """Text embedding (B, D) float32 → latent (B, out_dim): ``head`` (Siamese, optional) then
    ``mlp`` (module docstring). ``features(x)`` is the embedding the MLP reads (x itself without a
    head): the "after the transformer" stage of the histograms."""
    kind = "regress"

    def __init__(self, cfg: RegressConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.head = nn.Linear(cfg.in_dim, cfg.head_dim) if cfg.head_dim else None
        d, layers = cfg.head_dim or cfg.in_dim, []
        for i in range(cfg.layers):
            layers += [nn.Linear(d if i == 0 else cfg.hidden, cfg.hidden), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(cfg.hidden, cfg.out_dim))

    def config_dict(self) -> dict:
        return asdict(self.cfg)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.cfg.in_dim:
            raise ValueError(f"text embedding: expected shape ('*', {self.cfg.in_dim}), got {tuple(x.shape)}")
        return self.head(x) if self.head is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(x))


def build_regressor(arch: str, mode: str, in_dim: int, out_dim: int, device=None, **overrides) -> Regressor:
    """A ``Regressor`` of ``CONFIGS[arch]`` with the data's ``in_dim`` / ``out_dim``, the Siamese head
    for ``mode = "siamese"`` (``head_dim`` 768 unless overridden) and ``model.<field>`` overrides;
    ``device="meta"`` builds the shapes without allocating (the study's model is 2.6 GB in fp32).
    ``T2IError`` for an unknown arch, mode or field, or a head_dim that contradicts the mode."""
    if arch not in CONFIGS:
        raise T2IError(f"arch must be one of {', '.join(CONFIGS)}, got {arch!r}")
    if mode not in MODES:
        raise T2IError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    unknown = sorted(set(overrides) - set(asdict(CONFIGS[arch])) | (set(overrides) & {"in_dim", "out_dim"}))
    if unknown:
        raise T2IError(f"model.{unknown[0]}: not a setting of {arch} (in_dim and out_dim come from the sets); known: hidden, layers, head_dim")
    head = overrides.pop("head_dim", STUDY_HEAD if mode == "siamese" else 0)
    if (mode == "siamese") != (head > 0):
        raise T2IError(f"model.head_dim={head} with mode={mode}: the Siamese head is mode siamese's (head_dim >= 1) and mode mlp's has none (0)")
    try:
        cfg = replace(CONFIGS[arch], in_dim=in_dim, out_dim=out_dim, head_dim=head, **overrides)
    except (ValueError, TypeError) as e:
        raise T2IError(f"{arch}: {e}") from None
    with torch.device(device or "cpu"):
        return Regressor(cfg)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = STUDY_MARGIN) -> torch.Tensor:
    """Sentence-BERT's triplet objective (Reimers & Gurevych 2019 §3), mean over the batch:
    max(‖a − p‖₂ − ‖a − n‖₂ + margin, 0), through ``torch.nn.functional.triplet_margin_loss``
    (whose distance adds eps = 1e-6 to each difference). Inputs (B, E) float."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2.0, eps=1e-6)


def pair_values(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity, MSE) of each row pair of u, v (N, E), in float64: u·v / (‖u‖ ‖v‖)
    (0 where a vector is zero) and mean((u − v)²) over the E entries."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    cos = np.divide((u * v).sum(1), norms, out=np.zeros(len(u)), where=norms > 0)
    return cos, ((u - v) ** 2).mean(1)


# ---- the latent space of the autoencoder that made the image tokens ---------------------------------------------------

class LatentSpace:
    """The quantised latent of a one-grid VQ autoencoder: ``codebook`` (V, D) float32, ``grid``
    (h = w), ``size`` D·h·w. ``target(tokens (B, h, w))`` → z_q (B, D·h·w) float32, channel-first
    (D, h, w) flattened; ``decode(z)`` → images (B, 3, S, S) in [0, 1] from a continuous latent
    (the decoder reads it as it reads z_q); ``nearest(z)`` → tokens (B, h, w), the nearest codeword
    per cell (squared Euclidean, as ``vqvae`` encodes). Kinds: vqvae, vqvae_study, taming_vqgan;
    ``T2IError`` for a dVAE (no codebook vectors), a VQ-VAE-2 (two grids) or any other kind."""

    def __init__(self, model, where: str) -> None:
        kind = getattr(model, "kind", "?")
        if kind in ("vqvae", "vqvae_study"):
            book, self._pre = model.codebook.codebook, None
        elif kind == "taming_vqgan":
            book, self._pre = model.quantize.embedding.weight, model.post_quant_conv
        elif "dvae" in kind:
            raise T2IError(f"{where} is a {kind}: its tokens index no codebook vectors (its decoder reads one-hot codes), so there is "
                           f"no continuous latent to regress onto; encode the images with a VQ-VAE")
        elif kind == "vqvae2":
            raise T2IError(f"{where} is a VQ-VAE-2 (top and bottom grids); the regression baselines regress onto one VQ-VAE grid: "
                           f"encode with a VQ-VAE")
        else:
            raise T2IError(f"{where}: a {kind} autoencoder; the regression baselines take a VQ-VAE (vqvae, vqvae_study, taming_vqgan)")
        self.model, self.kind = model, kind
        self.codebook = book.detach().float()  # (V, D)
        self.vocab, self.dim = self.codebook.shape
        self.grid = model.cfg.grid
        self.size = self.dim * self.grid * self.grid

    def to(self, device) -> "LatentSpace":
        self.codebook = self.codebook.to(device)
        self.model.to(device)
        return self

    def target(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        return self.codebook[tokens.long()].permute(0, 3, 1, 2).reshape(b, -1)  # (B, h, w, D) → (B, D·h·w)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        b, g = z.shape[0], self.grid
        flat = z.float().view(b, self.dim, g * g).transpose(1, 2).reshape(-1, self.dim)  # (B·h·w, D)
        e = self.codebook
        d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ e.t() + (e * e).sum(1)[None, :]
        return d.argmin(1).view(b, g, g)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        q = z.float().view(z.shape[0], self.dim, self.grid, self.grid)
        if self._pre is None:
            return self.model.decoder(q).clamp(0, 1)
        return (self.model.decoder(self._pre(q)).clamp(-1, 1) + 1) / 2  # taming's post-processing


# ---- seeded draws: a view, a caption pair, histogram pairs --------------------------------------------------------------

def draw_view(views: int, seed: int, key: str, epoch: int) -> int:
    """The image-token view a sample trains on in ``epoch``: uniform over 0..views−1 from (seed, key, epoch)."""
    return int(uniform_int(seed, stream_id("regress-view"), key_ids([key]), epoch, views)[0])


def draw_captions(captions: int, seed: int, key: str, epoch: int, anchor: int | None = None) -> tuple[int, int]:
    """(anchor row, positive row) of a sample's C caption embeddings in ``epoch``, from (seed, key,
    epoch): the anchor uniform over the C rows (or the one given: the trainer's is
    ``text_emb.caption_index``'s), the positive uniform over the other C − 1 (the anchor itself
    when C = 1: the triplet then only pushes the negative away)."""
    k = key_ids([key])
    a = int(uniform_int(seed, stream_id("regress-anchor"), k, epoch, captions)[0]) if anchor is None else anchor
    if captions == 1:
        return a, a
    return a, (a + 1 + int(uniform_int(seed, stream_id("regress-positive"), k, epoch, captions - 1)[0])) % captions


def words(caption: str) -> set[str]:
    """The lower-case words of a caption (runs of letters and digits), for "no words in common"."""
    return set(re.findall(r"[a-z0-9]+", caption.lower()))


def histogram_pairs(counts: list[int], seed: int, captions: list[list[str]] | None = None, tries: int = 64) -> dict:
    """The caption pairs of the histograms over N images with ``counts[i]`` caption rows each.
    Similar: for each image with >= 2 captions, its two rows ``draw_captions(.., "pairs-<i>", 0)``
    gives. Dissimilar: for each image, a caption of another image drawn from (seed, i, try); with
    ``captions`` (the texts), the first of ``tries`` draws whose words share none (the seed's
    criterion; an image with none found gets no dissimilar pair). Returns {"similar": [[i, a, i, b]],
    "dissimilar": [[i, a, j, b]]} (image indices and caption rows)."""
    n = len(counts)
    sim, dis = [], []
    sid = stream_id("regress-dissimilar")
    for i, c in enumerate(counts):
        if c >= 2:
            a, b = draw_captions(c, seed, f"pairs-{i}", 0)
            sim.append([i, a, i, b])
        if n < 2 or c < 1:
            continue
        for t in range(tries):
            r = [int(uniform_int(seed, sid, i, 3 * t + s, 2**32)) for s in range(3)]  # the other image, its row, this row
            j = (i + 1 + r[0] % (n - 1)) % n
            if counts[j] < 1:
                continue
            a, b = r[2] % c, r[1] % counts[j]
            if captions is None or not (words(captions[i][a]) & words(captions[j][b])):
                dis.append([i, a, j, b])
                break
    return {"similar": sim, "dissimilar": dis}
