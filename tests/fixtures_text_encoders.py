"""Tiny local text encoders for tests: a random-init BERT saved with ``save_pretrained`` (weights fixed
by ``torch.manual_seed``), and the same wrapped in the sentence-transformers folder layout.

The tokenizer is BERT-base-uncased's WordPiece vocabulary (``<realdata>/vocab/bert-base-uncased``,
30,522 entries, ``conftest.realdata_dir``), so captions tokenize as they would for a real BERT; only
the model is tiny. Where the real-data folder is absent, a small WordPiece vocabulary made here
(BERT's five specials, letters, digits, their ``##`` continuations and a few caption words) stands
in, so the tests that use these encoders never skip. Nothing is downloaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "a an the of on in with and is are man woman dog cat bird red blue green white black small large sitting riding".split()


def write_vocab(path: Path) -> Path:
    """BERT-base-uncased's vocab.txt copied to ``path``, or the stand-in vocabulary (module docstring)."""
    from conftest import realdata_dir

    real = realdata_dir() / "vocab" / "bert-base-uncased" / "vocab.txt"
    if real.is_file():
        shutil.copy(real, path)
    else:
        chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(".,!?'-")
        path.write_text("\n".join(SPECIALS + chars + ["##" + c for c in chars] + WORDS) + "\n")
    return path


def tiny_bert(folder, hidden: int = 32, layers: int = 4, seed: int = 0, heads: int = 2, max_positions: int = 512,
              intermediate: int | None = None) -> Path:
    """A random-init ``BertModel`` (hidden ``hidden``, ``layers`` layers, ``heads`` heads, FFN ``intermediate``, default 2·hidden)
    with ``BertTokenizer`` from BERT-base-uncased's vocab.txt, saved with ``save_pretrained`` into
    ``folder`` (config.json, model.safetensors, tokenizer files, vocab.txt). The weights come from
    ``torch.manual_seed(seed)``: the same arguments give the same files. Returns ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_vocab(folder / "vocab.txt")
    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                     intermediate_size=intermediate or 2 * hidden, max_position_embeddings=max_positions))
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def tiny_sentence_bert(folder, pooling: str = "mean", root: bool = True, normalize: bool = False, **kw) -> Path:
    """A sentence-transformers folder around ``tiny_bert``: ``modules.json`` (Transformer, Pooling,
    and Normalize when ``normalize``), ``1_Pooling/config.json`` saying ``pooling`` ("mean" or
    "cls", or a raw sentence-transformers mode name such as "max"), ``sentence_bert_config.json``;
    the transformer in the root (``root``) or in ``0_Transformer/``. Returns ``folder``."""
    folder = Path(folder)
    sub = "" if root else "0_Transformer"
    tiny_bert(folder / sub if sub else folder, **kw)
    modules = [{"idx": 0, "name": "0", "path": sub, "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    modes = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
    flags = {m: False for m in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                                "pooling_mode_mean_sqrt_len_tokens")}
    flags[modes.get(pooling, f"pooling_mode_{pooling}")] = True
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": kw.get("hidden", 32), **flags}, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return folder
