"""Prompts → image tokens with a trained prior → pixels with the autoencoder → a PNG grid.

The prompt is tokenized exactly as the training captions were (same tokenizer, whose fingerprint
must equal the checkpoint's, same L and BOS/EOS settings); the autoencoder must be the one that
made the training image tokens (fingerprint checked too).
"""
from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from t2i_data.errors import T2IError
from t2i_data.figures import font
from t2i_data.text import load_tokenizer
from t2i_data.tokenize import encode_rows

from .checkpoint import load_autoencoder, load_prior, prompt_config
from .encode import decode_tokens

log = logging.getLogger(__name__)


def sample_grid(prior_ckpt, autoencoder_ckpt, tokenizer_dir, prompts: list[str], out, n: int = 4, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0, cell: int = 128) -> Path:
    if not prompts:
        raise T2IError("no prompts given: --prompt TEXT or --prompts FILE (one per line)")
    prior, ck = load_prior(prior_ckpt)
    tok = load_tokenizer(tokenizer_dir)
    want = ck["fingerprints"]
    if tok.fingerprint != want["tokenizer"]:
        raise T2IError(f"tokenizer {tok.fingerprint[:16]} is not the one the prior was trained with ({want['tokenizer'][:16]}); pass that tokenizer")
    ae, ae_ck = load_autoencoder(autoencoder_ckpt)
    if ae_ck["fingerprint"] != want["autoencoder"]:
        raise T2IError(f"autoencoder {ae_ck['fingerprint'][:16]} did not make the prior's image tokens ({want['autoencoder'][:16]}); pass that checkpoint")
    cfg = prompt_config(ck)
    rows, stats = encode_rows(tok, prompts, cfg, "int64")
    for warning in prompt_warnings(tok, prompts, rows, stats["lengths"], cfg.length - cfg.add_bos - cfg.add_eos):
        log.warning("%s", warning)
    text = torch.from_numpy(rows).repeat_interleave(n, dim=0)  # (P·n, L)
    gen = torch.Generator().manual_seed(seed)
    tokens = prior.generate(text, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)  # (P·n, h·w)
    g = ck["tokens"]["grid"]
    pixels = decode_tokens(ae, tokens.view(-1, g, g).numpy())  # (P·n, S, S, 3)
    sheet = prompt_sheet([list(pixels[p * n : (p + 1) * n]) for p in range(len(prompts))], prompts, cell)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def prompt_warnings(tok, prompts: list[str], rows, lengths: list[int], room: int) -> list[str]:
    """What the prior will not see of each prompt: words the tokenizer maps to its unknown id (the
    MD-MNIST vocabulary knows 20 symbols, "a red cat" is three unknowns), tokens cut at the text
    length, and prompts that tokenize to nothing."""
    out = []
    for prompt, row, n in zip(prompts, rows, lengths):
        unknown = int((row == tok.unk_id).sum()) if tok.unk_id is not None else 0
        if unknown:
            out.append(f"prompt {prompt!r}: {unknown} of its {min(n, room)} tokens are unknown to the {tok.kind} tokenizer "
                       f"(id {tok.unk_id}); the prior sees no word there")
        if n > room:
            out.append(f"prompt {prompt!r}: {n} tokens, cut to the {room} the prior was trained with")
        if n == 0:
            out.append(f"prompt {prompt!r}: no tokens at all; the prior samples unconditionally")
    return out


def prompt_sheet(rows: list[list], captions: list[str], cell: int = 128, gap_after: int = 0, header: str = "") -> Image.Image:
    """One row of (S, S, 3) uint8 images per caption, the caption written under its row. With
    ``gap_after`` = k a wider gap follows the k-th image of each row (two groups side by side);
    ``header`` is a line of text above the grid."""
    fnt = font(12)
    line = fnt.getbbox("Ag")[3] + 3
    text_h = 3 * line + 6
    n = max((len(r) for r in rows), default=0)
    gap = 16 if 0 < gap_after < n else 0
    top = line + 6 if header else 0
    sheet = Image.new("RGB", (n * (cell + 4) + 4 + gap, top + len(rows) * (cell + text_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if header:
        draw.text((4, 4), header, fill=(0, 0, 0), font=fnt)
    for p, (images, caption) in enumerate(zip(rows, captions)):
        y = top + 4 + p * (cell + text_h + 4)
        for j, pixels in enumerate(images):
            im = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(im, (4 + j * (cell + 4) + (gap if gap and j >= gap_after else 0), y))
        for k, ln in enumerate(textwrap.wrap(caption, max(20, n * cell // 7))[:3]):
            draw.text((4, y + cell + 3 + k * line), ln, fill=(0, 0, 0), font=fnt)
    return sheet


def cli_main(args) -> int:
    """``t2i sample``: checks the flags, then writes the PNG grid (``--out X.png``)."""
    if args.n < 1:
        raise T2IError(f"-n must be at least 1 (samples per prompt), got {args.n}")
    if args.temperature < 0 or args.temperature != args.temperature:
        raise T2IError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise T2IError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise T2IError(f"--top-k must be 0 (off) or more, got {args.top_k}")

    prompts = list(args.prompt or [])
    if args.prompts:
        try:
            prompts += [ln.strip() for ln in Path(args.prompts).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except FileNotFoundError:
            raise T2IError(f"--prompts {args.prompts}: no such file") from None
    out = sample_grid(args.prior, args.autoencoder, args.tokenizer, prompts, args.out, n=args.n, temperature=args.temperature,
                      top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(f"wrote {out} ({len(prompts)} prompts x {args.n} samples)")
    return 0
