"""What training CLIP and comparing the priors share on MD-MNIST: the descriptions and their
variants, CLIP's scores on them, and one pass over a (test) token split. ``train_clip`` reports
``clip_accuracy`` at the end of training; ``eval_mdmnist`` builds CICS and CTRS on the same pieces
and takes the priors' test losses from the same pass. Neither is imported here. ``eval_priors``
(any captions, issue 19) reuses ``variant`` (its mdmnist mode, through ``caption_variants``),
``ctrs_counts`` (with absent variants), ``counts_summary`` and ``variant_scores``.

Descriptions are pure functions of (seed, index): every attribute of every digit uniform over its
values. Variant m of a description has exactly m of its 12 symbols changed (m distinct positions;
each changed symbol takes another value of the same attribute; both drawn from (seed, index, m)).
The thesis code drew positions *with* replacement, so its "m changes" could be fewer; here they
are exactly m. CLIP's accuracy is the share of images whose true description scores strictly
above all 12 of its variants (chance 1/13); ties count against the true description.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from t2i_data.errors import T2IError
from t2i_data.mdmnist import COLORS, POSITIONS, SIZES, SYMBOL_ID, VOCAB
from t2i_data.rng import keyed_u64, stream_id, uniform_int
from t2i_data.text.mdmnist import MDMNISTTokenizer
from t2i_data.token_stream import TokenStream
from t2i_data.tokenize import encode_rows

from .checkpoint import prompt_config, weights_fingerprint
from .clip import TEXT_LEN, symbols_from_text_tokens
from .encode import reconstruct

# The values each of the 12 positions may take, as symbol ids: value, size, colour, position per digit.
ATTRIBUTES = (tuple(SYMBOL_ID[str(v)] for v in range(10)), tuple(SYMBOL_ID[str(s)] for s in SIZES),
              tuple(SYMBOL_ID[c] for c in COLORS), tuple(SYMBOL_ID[p] for p in POSITIONS))
ATTRIBUTE_NAMES = ("value", "size", "colour", "position")
M_MAX = TEXT_LEN  # variants m = 1..12
log = logging.getLogger(__name__)


# -- descriptions and variants: pure functions of (seed, index) -----------------------------------
def random_descriptions(seed: int, indices) -> np.ndarray:
    """(n, 12) symbol ids; every attribute of every digit uniform over its values."""
    idx = np.asarray(indices, dtype=np.uint64)
    stream = stream_id("eval-mdmnist", "description")
    cols = [np.asarray(ATTRIBUTES[p % 4])[uniform_int(seed, stream, idx, p, len(ATTRIBUTES[p % 4]))] for p in range(TEXT_LEN)]
    return np.stack(cols, axis=1).astype(np.int64).reshape(len(idx), TEXT_LEN)


def _local(symbols: np.ndarray) -> np.ndarray:
    """Symbol ids → their index within their position's attribute; refuses a malformed description."""
    firsts = np.array([ATTRIBUTES[p % 4][0] for p in range(TEXT_LEN)])
    sizes = np.array([len(ATTRIBUTES[p % 4]) for p in range(TEXT_LEN)])
    local = symbols - firsts
    if ((local < 0) | (local >= sizes)).any():
        r = int(np.argwhere((local < 0) | (local >= sizes))[0][0])
        raise T2IError(f"not an MD-MNIST description (value size colour position × 3): {describe(symbols[r])!r}")
    return local


def variant(symbols: np.ndarray, seed: int, stream: str, indices, m: int) -> np.ndarray:
    """Each description with exactly ``m`` of its 12 symbols changed: the m positions are distinct
    (the first m of a keyed random permutation), each takes a uniformly drawn *other* value of the
    same attribute. A pure function of (seed, stream, index, m)."""
    if not 0 <= m <= TEXT_LEN:
        raise ValueError(f"m must be in 0..{TEXT_LEN}, got {m}")
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1, TEXT_LEN)
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
    local = _local(symbols)
    sid = stream_id("eval-mdmnist", "variant", stream)
    keys = np.stack([keyed_u64(seed, sid, idx, 2 * (m * TEXT_LEN + p)) for p in range(TEXT_LEN)], axis=1)  # (n, 12)
    changed = np.zeros(symbols.shape, dtype=bool)
    np.put_along_axis(changed, np.argsort(keys, axis=1, kind="stable")[:, :m], True, axis=1)
    out = symbols.copy()
    for p in range(TEXT_LEN):
        values = ATTRIBUTES[p % 4]
        shift = 1 + uniform_int(seed, sid, idx, 2 * (m * TEXT_LEN + p) + 1, len(values) - 1)  # 1 .. |values| − 1
        new = np.asarray(values)[(local[:, p] + shift) % len(values)]
        out[:, p] = np.where(changed[:, p], new, symbols[:, p])
    return out


def variant_set(symbols: np.ndarray, seed: int, stream: str, indices) -> np.ndarray:
    """(n, 13, 12): the true description (m = 0) then its variants m = 1..12."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1, TEXT_LEN)
    return np.stack([symbols] + [variant(symbols, seed, stream, indices, m) for m in range(1, M_MAX + 1)], axis=1)


def describe(symbols) -> str:
    """12 symbol ids → the description as text, its symbols joined by spaces ("2 40 b down 2 40 w middle ...")."""
    return " ".join(VOCAB[int(s)] for s in symbols)


# -- CTRS counts -----------------------------------------------------------------------------------
def ctrs_counts(scores: torch.Tensor, present: torch.Tensor | None = None) -> dict:
    """(n, 1 + M) scores, column 0 the true description (MD-MNIST: M = 12) → picked / true_rank
    histograms (M + 1 columns each) and ties. ``present`` (n, 1 + M) bool marks the variants that
    exist (a caption with fewer swappable words than m has no variant m, ``caption_variants``): an
    absent one is never picked, never outranks the true caption and ties with nothing. Column 0
    must be present. Without ``present`` every variant exists (MD-MNIST)."""
    m_max = scores.shape[1] - 1
    if present is not None:
        if present.shape != scores.shape or not bool(present[:, 0].all()):
            raise ValueError(f"present must be ({tuple(scores.shape)}) with column 0 (the true caption) set, got {tuple(present.shape)}")
        scores = scores.masked_fill(~present, float("-inf"))
    true = scores[:, :1]
    beaten = scores[:, 1:] >= true  # ties count against the true description
    rank = (beaten if present is None else beaten & present[:, 1:]).sum(dim=1)
    picked = m_max - scores.flip(1).argmax(dim=1)  # the highest score; ties → the larger m
    top = scores.max(dim=1, keepdim=True).values  # finite: column 0 is always there
    ties = int(((scores == top).sum(dim=1) > 1).sum())
    return {"picked": torch.bincount(picked, minlength=m_max + 1).tolist(),
            "true_rank": torch.bincount(rank, minlength=m_max + 1).tolist(), "ties": ties}


def add_counts(total: dict, part: dict) -> dict:
    """The sum of two ``ctrs_counts`` results (``total`` may be empty: the first batch)."""
    if not total:
        return dict(part)
    return {"picked": [a + b for a, b in zip(total["picked"], part["picked"])],
            "true_rank": [a + b for a, b in zip(total["true_rank"], part["true_rank"])], "ties": total["ties"] + part["ties"]}


def counts_summary(c: dict) -> dict:
    """``ctrs_counts`` totals plus the number of images, the share picked at m = 0 (top1) and the mean rank of the true description."""
    n = sum(c["picked"])
    mean_rank = sum(r * k for r, k in enumerate(c["true_rank"])) / max(n, 1)
    return dict(c, images=n, top1=round(c["picked"][0] / max(n, 1), 6), mean_true_rank=round(mean_rank, 6))


# -- CLIP scoring ----------------------------------------------------------------------------------
@torch.no_grad()
def variant_scores(clip, images: torch.Tensor, sets: np.ndarray) -> torch.Tensor:
    """Cosine of each image (n, 3, S, S) with each of its k texts, (n, k, 12) MD-MNIST symbols or
    (n, k, L) text-token rows (the CLIP's own text input, ``clip.clip_text``) → (n, k) float32."""
    dev = images.device
    img = clip.image_features(images)  # (n, E)
    txt = clip.text_features(torch.from_numpy(np.ascontiguousarray(sets).reshape(-1, sets.shape[2])).to(dev))
    return torch.einsum("ne,nke->nk", img, txt.view(len(sets), sets.shape[1], -1)).cpu()


def key_indices(keys: list[str]) -> np.ndarray:
    """Sample keys → uint64 indices for the variant draws, so a test image's variants depend on
    its key and the seed, not on where the stream puts it."""
    return np.array([stream_id("eval-mdmnist", "key", k) for k in keys], dtype=np.uint64)


def open_stream(image_tokens, text_tokens, batch_size: int, seed: int, autoencoder_fp: str | None, tokenizer_fp: str | None = None,
                mdmnist: bool = True):
    """A TokenStream over text tokens and image tokens made by the given autoencoder; with
    ``mdmnist`` (the symbol CLIPs), only MD-MNIST descriptions tokenized by the mdmnist tokenizer."""
    ds = TokenStream(image_tokens, text_tokens, batch_size, seed, expect_tokenizer=tokenizer_fp, expect_autoencoder=autoencoder_fp)
    if not mdmnist:
        return ds
    kind = ds.txt_m["tokenizer"].get("kind")
    if kind != "mdmnist" or ds.txt_m.get("dataset") != "mdmnist":
        raise T2IError(f"{text_tokens}: {ds.txt_m.get('dataset')} captions tokenized by a {kind} tokenizer; CLIP and this evaluation "
                       f"read MD-MNIST descriptions tokenized with the mdmnist tokenizer ('t2i tokenizer load --kind mdmnist'); "
                       f"for other captions train arch=clip_tokens")
    return ds


def prior_text(ck: dict, symbols: np.ndarray) -> torch.Tensor:
    """Descriptions → the prior's text rows, tokenized exactly as its training captions were."""
    rows, _ = encode_rows(MDMNISTTokenizer(), [describe(s) for s in symbols], prompt_config(ck), "int64")
    return torch.from_numpy(rows)


def clip_accuracy(clip, ae, image_tokens, text_tokens, seed: int, device=None, batch_size: int = 100, limit: int = 0) -> dict:
    """CLIP's accuracy at picking the true description among it and 12 variants, on the
    reconstructions of an image-token set (the test split); variants drawn from (seed, key)."""
    acc, _, where = split_pass(image_tokens, text_tokens, seed, batch_size, limit, clip, ae, [], device or torch.device("cpu"),
                               expect_ae=weights_fingerprint(ae))
    return dict(acc, split=where["split"])


@torch.no_grad()
def split_pass(image_tokens, text_tokens, seed: int, batch_size: int, limit: int, clip, ae, priors, device, expect_ae: str):
    """One pass over a (test) token set made by autoencoder ``expect_ae``: CLIP's accuracy on the
    reconstructions, and each prior's per-sample image-token cross-entropy, as arrays in key order
    (independent of the stream's order)."""
    ds = open_stream(image_tokens, text_tokens, batch_size, seed, expect_ae)
    if ds.img_m.get("split") != "test":
        log.warning("%s is the %s split; the thesis evaluates on the test split", image_tokens, ds.img_m.get("split"))
    losses: list[dict] = [{} for _ in priors]
    total: dict = {}
    seen = 0
    for batch in tqdm(ds, desc=f"{ds.img_m.get('split')} split", unit="batch", disable=None):
        ok = batch["valid"]
        keys = [k for k, v in zip(batch["keys"], ok.tolist()) if v]
        if limit:
            keys = keys[: max(0, limit - seen)]
        if not keys:
            continue
        seen += len(keys)
        image = batch["image"][ok][: len(keys)].long().to(device)
        symbols = symbols_from_text_tokens(batch["text"][ok][: len(keys)]).numpy()
        sets = variant_set(symbols, seed, "clip-test", key_indices(keys))
        total = add_counts(total, ctrs_counts(variant_scores(clip, reconstruct(ae, image), sets)))
        for slot, (prior, pck) in enumerate(priors):
            logits = prior(prior_text(pck, symbols).to(device), image)["image_logits"]
            per = F.cross_entropy(logits.float().transpose(1, 2), image, reduction="none").mean(dim=1)  # (n,)
            losses[slot].update(zip(keys, per.cpu().tolist()))
    if not total:
        raise T2IError(f"{image_tokens}: no samples to evaluate on")
    s = counts_summary(total)
    acc = {"accuracy": s["top1"], "samples": s["images"], "chance": round(1 / (M_MAX + 1), 6), "picked": s["picked"],
           "true_rank": s["true_rank"], "ties": s["ties"], "mean_true_rank": s["mean_true_rank"]}
    arrays = [np.array([d[k] for k in sorted(d)]) for d in losses]
    return acc, arrays, {"split": ds.img_m.get("split"), "digest": ds.img_m.get("aligned_to"), "samples": seen}
