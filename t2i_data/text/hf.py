"""BPE and WordPiece tokenizers on the Rust ``tokenizers`` library: trained on captions, or
loaded from local files (tokenizer.json, GPT-2 vocab.json + merges.txt, CLIP's
bpe_simple_vocab_16e6.txt.gz, BERT's vocab.txt, a Hugging Face tokenizer folder). Nothing here
touches the network.

``encode_special_tokens`` is switched on, so text that spells a special token ("[PAD]",
"<|endoftext|>") is tokenized as text and the pad id is never produced for a caption. The saved
tokenizer.json leaves the special added tokens out and tokenizer_config.json lists them, so that
``tokenizers`` and ``transformers`` reopen the folder with the same ids (``interop.py``).
"""
from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Iterable

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..errors import T2IError
from ..extras import require
from . import interop
from .base import TextTokenizer

log = logging.getLogger(__name__)

# CLIP's SimpleTokenizer pattern (openai/CLIP, clip/simple_tokenizer.py)
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class HFTokenizer(TextTokenizer):
    def __init__(self, kind: str, tok: Tokenizer, specials: dict, source: dict) -> None:
        self.kind = kind
        self.tok = tok
        self._fast = None
        self.tok.encode_special_tokens = True
        self.tok.no_padding()
        self.tok.no_truncation()
        self.source = source
        n = tok.get_vocab_size(with_added_tokens=True)

        def tid(name):
            token = specials.get(name)
            if token is None:
                return None
            i = tok.token_to_id(token)
            if i is None:
                raise T2IError(f"special token {token!r} ({name}) is not in the vocabulary")
            return i

        self.bos_id, self.eos_id, self.unk_id = tid("bos"), tid("eos"), tid("unk")
        pad = tid("pad")
        # no pad token of its own (GPT-2, CLIP): the id just past the vocabulary, never a real token
        self.pad_id = pad if pad is not None else n
        self.vocab_size = n if pad is not None else n + 1
        self.specials = specials

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._fast is None:
            from .fastpath import FastEncoder

            self._fast = FastEncoder(self.tok)
        return self._fast.encode_batch(texts)

    def encode_batch_rust(self, texts: list[str]) -> list[list[int]]:
        """The library's own path, for every text (what the fast path is tested against)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([i for i in ids if i != self.pad_id], skip_special_tokens=True).strip()

    def meta(self) -> dict:
        return dict(super().meta(), specials=self.specials)

    def _save_files(self, folder: Path) -> list[str]:
        """tokenizer.json (t2i, ``tokenizers``, ``transformers``) without the special added
        tokens, and tokenizer_config.json (``transformers``) naming them; t2i's own form of
        tokenizer.json, the one fingerprinted, is rebuilt from the two (``interop.t2i_form``)."""
        t2i_text = self.tok.to_str(pretty=True) + "\n"
        text, added = interop.interop_form(t2i_text)
        path, config = folder / interop.TOKENIZER_JSON, folder / interop.CONFIG_NAME
        path.write_text(text, encoding="utf-8")
        interop.write_json(config, interop.transformers_config(added, self._special_names()))
        if interop.t2i_form(folder) != t2i_text.encode("utf-8"):
            # tokenizers writes added tokens in a layout interop._render does not reproduce:
            # keep t2i's file and fingerprint, give up the interop files
            log.warning("%s: cannot write tokenizer.json without its special tokens (tokenizers %s changed its layout); "
                        "wrote t2i's own form: tokenizers and transformers will encode spelled special tokens as specials",
                        folder, tokenizers.__version__)
            path.write_text(t2i_text, encoding="utf-8")
            config.unlink()
        return [interop.TOKENIZER_JSON]

    def _special_names(self) -> dict[str, str]:
        """pad, bos, eos, unk by token, for transformers. GPT-2 and CLIP have no pad token: one
        named here, absent from the vocabulary, gets the id after it there, as here."""
        names = {k: self.specials[k] for k in ("pad", "bos", "eos", "unk") if k in self.specials}
        if "pad" not in names:
            vocab = self.tok.get_vocab(with_added_tokens=True)
            names["pad"] = next(t for t in ("[PAD]", "<pad>", "<|pad|>", "[T2I_PAD]") if t not in vocab)
        return names

    @classmethod
    def _t2i_bytes(cls, folder: Path, name: str) -> bytes:
        return interop.t2i_form(folder) if name == interop.TOKENIZER_JSON else super()._t2i_bytes(folder, name)

    @classmethod
    def _load_files(cls, folder: Path, meta: dict) -> "HFTokenizer":
        tok = Tokenizer.from_str(interop.t2i_form(folder).decode("utf-8"))
        return cls(meta["kind"], tok, meta["specials"], meta["source"])


# -- training -------------------------------------------------------------------------------
def train_bpe(captions: Iterable[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """Byte-level BPE on NFKC-normalised, lowercased captions, as DALL·E: no unknown tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = {"pad": "[PAD]", "bos": "[BOS]", "eos": "[EOS]"}
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    return HFTokenizer("bpe", tok, specials, {"trained": "bpe", "vocab_size": vocab_size, "min_frequency": min_frequency})


def train_wordpiece(captions: list[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """BERT-style uncased WordPiece (BertNormalizer, BertPreTokenizer, ## continuation).

    ``WordPieceTrainer`` numbers the "##x" continuation tokens in hash-map order, and those ids
    break ties between merges, so the same captions gave different vocabularies from run to run
    (huggingface/tokenizers#1794). Every "##x" is therefore handed to the trainer up front, in
    sorted order, which leaves it nothing to number by chance; the tokenizer is then rebuilt so
    that those entries are ordinary vocabulary, not special tokens.
    """
    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    inner = set()
    for caption in captions:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(caption)):
            inner.update(word[1:])
    specials = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]"}
    reserved = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=reserved + ["##" + c for c in sorted(inner)],
        show_progress=False,
    )
    scratch = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    scratch.normalizer, scratch.pre_tokenizer = norm, pre
    scratch.train_from_iterator(captions, trainer=trainer)
    tok = Tokenizer(models.WordPiece(vocab=scratch.get_vocab(), unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    tok.add_special_tokens(reserved)
    return HFTokenizer("wordpiece", tok, specials, {"trained": "wordpiece", "vocab_size": vocab_size, "min_frequency": min_frequency})


# -- loading local pretrained files ----------------------------------------------------------
def load_gpt2(vocab_json: Path, merges_txt: Path) -> HFTokenizer:
    tok = Tokenizer(models.BPE.from_file(str(vocab_json), str(merges_txt)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}
    return HFTokenizer("bpe", tok, specials, {"loaded": "gpt2 vocab.json + merges.txt"})


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def load_clip(bpe_gz: Path) -> HFTokenizer:
    """CLIP's tokenizer from its merges file, built as its SimpleTokenizer builds the vocabulary
    (bytes, bytes + '</w>', the first 48,894 merges, then <|startoftext|> and <|endoftext|>)."""
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token="<|endoftext|>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # bytes back from their printable stand-ins, then the end-of-word marks become spaces
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("</w>", " ")])
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    specials = {"bos": "<|startoftext|>", "eos": "<|endoftext|>"}
    return HFTokenizer("bpe", tok, specials, {"loaded": "clip bpe_simple_vocab_16e6.txt.gz"})


def load_bert_vocab(vocab_txt: Path) -> HFTokenizer:
    """An uncased BERT WordPiece vocabulary, through transformers' BertTokenizerFast (local files only)."""
    require("transformers", "a BERT vocab.txt tokenizer")
    from transformers import BertTokenizerFast

    hf = BertTokenizerFast(vocab=str(vocab_txt), do_lower_case=True)
    return _from_transformers(hf, "wordpiece", {"loaded": f"vocab.txt via transformers.{type(hf).__name__}"})


def load_hf_folder(folder: Path, kind: str) -> HFTokenizer:
    """A local Hugging Face tokenizer folder, through transformers (never the network)."""
    require("transformers", "a Hugging Face tokenizer folder")
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        else:  # a bare vocab.txt folder, as bert-base-uncased ships
            hf = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise T2IError(f"{folder}: not a loadable tokenizer folder ({e})") from None
    return _from_transformers(hf, kind, {"loaded": f"folder via transformers.{type(hf).__name__}"})


def _from_transformers(hf, kind: str, source: dict) -> HFTokenizer:
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise T2IError(f"transformers gave a {type(hf).__name__} without a Rust backend; give its tokenizer.json instead")
    tok = Tokenizer.from_str(backend.to_str())
    tok.post_processor = None  # BOS/EOS are the tokenize stage's job
    names = {"pad": hf.pad_token, "unk": hf.unk_token, "bos": hf.cls_token or hf.bos_token, "eos": hf.sep_token or hf.eos_token}
    return HFTokenizer(kind, tok, {k: str(v) for k, v in names.items() if v is not None}, source)


def load_tokenizer_json(path: Path, kind: str, specials: dict | None = None) -> HFTokenizer:
    if path.name == interop.TOKENIZER_JSON and (path.parent / interop.CONFIG_NAME).is_file():
        # saved by t2i (or transformers): its special added tokens may be listed only in tokenizer_config.json
        tok = Tokenizer.from_str(interop.t2i_form(path.parent).decode("utf-8"))
    else:
        tok = Tokenizer.from_file(str(path))
    tok.post_processor = None
    if specials is None:  # guess the usual names from the added tokens
        added = {t.content for t in tok.get_added_tokens_decoder().values()}
        specials = {}
        for name, candidates in {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "bos": ("[CLS]", "[BOS]", "<s>", "<|startoftext|>"),
                                 "eos": ("[SEP]", "[EOS]", "</s>", "<|endoftext|>")}.items():
            specials.update({name: c for c in candidates[::-1] if c in added})
    return HFTokenizer(kind, tok, specials, {"loaded": "tokenizer.json"})
