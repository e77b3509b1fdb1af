"""Pure-Python reference implementations of two classic byte-level BPE tokenizers.

These follow, logic for logic, the original published code and serve as an
independent oracle for the project's (Rust ``tokenizers``-based) loaders:

* ``GPT2Reference`` -- OpenAI gpt-2 ``src/encoder.py`` (MIT license).
* ``CLIPReference`` -- OpenAI CLIP ``clip/simple_tokenizer.py`` (MIT license).

Neither adds special tokens in ``encode``; CLIP exposes ``sot_id``/``eot_id``.
"""

import gzip
import html
import json
import re

import regex


def bytes_to_unicode():
    """Reversible map from utf-8 bytes to printable unicode characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def get_pairs(word):
    return {(a, b) for a, b in zip(word[:-1], word[1:])}


def _merge_loop(word, bpe_ranks):
    """Greedy BPE: repeatedly merge the lowest-rank adjacent pair (original loop)."""
    pairs = get_pairs(word)
    while True:
        bigram = min(pairs, key=lambda pair: bpe_ranks.get(pair, float("inf")))
        if bigram not in bpe_ranks:
            break
        first, second = bigram
        new_word = []
        i = 0
        while i < len(word):
            try:
                j = word.index(first, i)
            except ValueError:
                new_word.extend(word[i:])
                break
            new_word.extend(word[i:j])
            i = j
            if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        if len(word) == 1:
            break
        pairs = get_pairs(word)
    return " ".join(word)


class GPT2Reference:
    """gpt-2 ``encoder.Encoder`` (errors='replace')."""

    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, vocab_json_path, merges_txt_path):
        with open(vocab_json_path, encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(merges_txt_path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        # Original: bpe_data.split('\n')[1:-1] -- drop the '#version' header and
        # the empty string after the final newline (tolerate a missing one).
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.cache = {}

    def bpe(self, token):
        if token not in self.cache:
            word = tuple(token)
            self.cache[token] = token if len(word) < 2 else _merge_loop(word, self.bpe_ranks)
        return self.cache[token]

    def encode(self, text):
        ids = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")


def basic_clean(text):
    # The original first applies ftfy.fix_text(text); ftfy is not installed and
    # only repairs mojibake, so it is omitted (the test sentences are clean).
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text):
    return re.sub(r"\s+", " ", text).strip()


class CLIPReference:
    """CLIP ``simple_tokenizer.SimpleTokenizer``; ``encode`` adds no SOT/EOT."""

    pat = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE)

    def __init__(self, bpe_gz_path):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = gzip.open(bpe_gz_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab]
        vocab.extend("".join(m) for m in merges)
        vocab.extend(["<|startoftext|>", "<|endoftext|>"])
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.sot_id = self.encoder["<|startoftext|>"]
        self.eot_id = self.encoder["<|endoftext|>"]

    def bpe(self, token):
        if token not in self.cache:
            word = tuple(token[:-1]) + (token[-1] + "</w>",)
            self.cache[token] = token + "</w>" if len(word) < 2 else _merge_loop(word, self.bpe_ranks)
        return self.cache[token]

    def encode(self, text):
        ids = []
        text = whitespace_clean(basic_clean(text)).lower()
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def decode(self, ids):
        text = "".join(self.decoder[i] for i in ids)
        text = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")


SENTENCES: list[str] = [
    "A man riding a wave on top of a surfboard.", "Two dogs play with a frisbee in the park",
    "this bird has a white belly and a black crown", "4 30 g down 8 40 b up", "?!...",
    "it's the dog's bone, isn't it? They'll see; we'd've gone.",
    "A Small RED Car PARKED next to a Fire Hydrant", "a  cat   sitting    on a mat",
    "a dog\ton a sofa\nnear the window", "café crème brûlée on a plate", "a 猫 sitting next to a 🐦",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "   leading and trailing spaces   ",
    "the year 2024 had 365 days & 12 months (roughly)", "Hello world",
]
