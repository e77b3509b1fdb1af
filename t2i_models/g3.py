"""G3 (optional, the seed report's BERT2GPT2): transformers' EncoderDecoderModel, a BERT encoder
and a GPT-2 decoder with cross-attention. The decoder's vocabulary is V + 1: the image codes and
a BOS (id V). Never the network: pretrained weights come from local folders only.

The config builds it one of three ways:

- random: a BertConfig and a GPT2Config from the G2 fields (depths, heads, width, MLP width,
  activation; BERT's positions ``text_positions``, GPT-2's h·w);
- warm-started (``bert`` and ``gpt2``, local folders as ``save_pretrained`` writes them), as the
  DALL·E reproduction on COCO 2017 does (seed 004, §2.2.2: "Both the BERT and GPT2 models were
  pre-trained"): ``EncoderDecoderModel.from_encoder_decoder_pretrained`` with local files only,
  fp32 weights (transformers 5 keeps a folder's dtype; the trainer needs fp32 master weights),
  cross-attention added to GPT-2 (new weights, from torch's global generator as transformers
  initialises them: the trainer seeds it). ``resize_token_embeddings(V + 1)`` keeps GPT-2's first
  min(its vocabulary, V + 1) rows, as transformers resizes; rows past GPT-2's vocabulary (a small
  GPT-2, in tests) are drawn N(0, GPT-2's initializer_range, 0.02) from a generator seeded with
  ``init_seed``. GPT-2 small (50,257 ids) shrinks to 8,193: every row, BOS included, is one of
  its first BPE rows, none is new. The LM head stays tied to the input embeddings (checked).
  The model's config then holds both transformers configs as dicts and where the weights came
  from (``pretrained``: each folder as given and the sha256 of the weight files transformers
  reads), and no longer names the folders;
- rebuilt (``encoder_config`` / ``decoder_config``, what a warm start saved): the same
  architecture with fresh weights, which a checkpoint's then replace; ``checkpoint.load_prior``
  needs no folder.

Every way is checked the same: GPT-2's positions cover the h·w image tokens, BERT's the text
length, BERT's vocabulary is the text tokenizer's, and the G2 fields agree with the two configs
(so the saved config describes the model); each failure is one ``T2IError`` naming both sides.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from t2i_data.errors import T2IError

from .attention import check_ids, image_token_loss
from .blocks import check_shape
from .g2 import G2Config

# G3's activation -> (BERT's hidden_act, GPT-2's activation_function); "gelu" is each one's default
HF_ACTIVATIONS = {"gelu": ("gelu", "gelu_new"), "relu": ("relu", "relu")}


@dataclass(frozen=True)
class G3Config(G2Config):
    """G2's fields (token spaces, encoder / decoder depths, heads, width, MLP width ``mlp``, 0:
    4 · width, BERT's ``intermediate_size`` and GPT-2's ``n_inner``, and ``activation``).
    ``dropout`` is not passed on: BERT and GPT-2 keep their own 0.1. The fields below default to
    the random G3 as it was before they existed, so older configs and checkpoints rebuild as saved."""
    text_positions: int = 0  # BERT's max_position_embeddings when random; 0: text_len
    bert: str = ""  # a local BERT folder to start the encoder from (with gpt2)
    gpt2: str = ""  # a local GPT-2 folder to start the decoder from (with bert)
    init_seed: int = 0  # seeds the decoder's embedding rows past GPT-2's vocabulary
    encoder_config: dict = field(default_factory=dict)  # BertConfig.to_dict() of a warm-started G3
    decoder_config: dict = field(default_factory=dict)  # GPT2Config.to_dict(), its vocabulary V + 1
    pretrained: dict = field(default_factory=dict)  # where a warm start's weights came from (folders, sha256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_positions < 0:
            raise ValueError(f"text_positions must be >= 0 (0: text_len), got {self.text_positions}")
        for name in ("encoder_config", "decoder_config", "pretrained"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a table (a dict), got {getattr(self, name)!r}")
        if bool(self.bert) != bool(self.gpt2):
            raise ValueError("bert and gpt2 go together: give both folders (model.bert=DIR model.gpt2=DIR), or neither for "
                             "random weights")
        if bool(self.encoder_config) != bool(self.decoder_config):
            raise ValueError("encoder_config and decoder_config go together (the configs a warm-started G3 saved)")
        if self.bert and self.encoder_config:
            raise ValueError("give the pretrained folders (bert, gpt2) or the configs a saved G3 holds (encoder_config, "
                             "decoder_config), not both")


def _random_configs(cfg: G3Config):
    from transformers import BertConfig, GPT2Config

    enc_act, dec_act = HF_ACTIVATIONS[cfg.activation]
    enc = BertConfig(vocab_size=cfg.text_vocab, hidden_size=cfg.width, num_hidden_layers=cfg.encoder_layers,
                     num_attention_heads=cfg.heads, intermediate_size=cfg.mlp or 4 * cfg.width,
                     max_position_embeddings=cfg.text_positions or cfg.text_len, pad_token_id=cfg.pad_id, hidden_act=enc_act)
    dec = GPT2Config(vocab_size=cfg.image_vocab + 1, n_embd=cfg.width, n_layer=cfg.decoder_layers, n_head=cfg.heads,
                     n_inner=cfg.mlp or None, activation_function=dec_act, n_positions=cfg.grid * cfg.grid,
                     add_cross_attention=True, is_decoder=True, bos_token_id=cfg.image_vocab, eos_token_id=cfg.image_vocab)
    return enc, dec


def check_hf_configs(cfg: G3Config, enc, dec, where: str, dec_vocab: bool = True) -> None:
    """``T2IError`` (prefixed ``where``) when the BERT config ``enc`` or the GPT-2 config ``dec``
    cannot serve ``cfg``: GPT-2's ``n_positions`` below h·w, BERT's positions below the text
    length, BERT's vocabulary not the text tokenizer's, GPT-2's not V + 1 (``dec_vocab``; off
    for a folder still to be resized), or a G2 field that differs from them."""
    hw = cfg.grid * cfg.grid
    if dec.n_positions < hw:
        raise T2IError(f"{where}: GPT-2 has n_positions {dec.n_positions}, fewer than the {hw} image tokens of a "
                       f"{cfg.grid}x{cfg.grid} grid; use a GPT-2 with at least {hw} positions (GPT-2 small: 1024)")
    if enc.max_position_embeddings < cfg.text_len:
        raise T2IError(f"{where}: BERT has {enc.max_position_embeddings} positions, fewer than the text length {cfg.text_len}; "
                       f"tokenize captions to at most {enc.max_position_embeddings} tokens")
    if enc.vocab_size != cfg.text_vocab:
        raise T2IError(f"{where}: BERT's vocabulary has {enc.vocab_size:,} ids, the text tokens' tokenizer {cfg.text_vocab:,}; "
                       f"tokenize the captions with the BERT's own WordPiece vocabulary (bert-base-uncased: 30,522 ids)")
    if dec_vocab and dec.vocab_size != cfg.image_vocab + 1:
        raise T2IError(f"{where}: GPT-2's vocabulary has {dec.vocab_size} ids, expected V + 1 = {cfg.image_vocab + 1} "
                       f"(the image codes and BOS)")
    mlp = cfg.mlp or 4 * cfg.width
    enc_act, dec_act = HF_ACTIVATIONS[cfg.activation]
    pairs = [("encoder_layers", cfg.encoder_layers, "BERT num_hidden_layers", enc.num_hidden_layers),
             ("decoder_layers", cfg.decoder_layers, "GPT-2 n_layer", dec.n_layer),
             ("width", cfg.width, "BERT hidden_size", enc.hidden_size), ("width", cfg.width, "GPT-2 n_embd", dec.n_embd),
             ("heads", cfg.heads, "BERT num_attention_heads", enc.num_attention_heads),
             ("heads", cfg.heads, "GPT-2 n_head", dec.n_head),
             ("mlp", mlp, "BERT intermediate_size", enc.intermediate_size), ("mlp", mlp, "GPT-2 n_inner", dec.n_inner or 4 * dec.n_embd),
             ("activation", enc_act, "BERT hidden_act", enc.hidden_act), ("activation", dec_act, "GPT-2 activation_function",
                                                                          dec.activation_function)]
    wrong = [f"{name} {ours!r} but {theirs} {value!r}" for name, ours, theirs, value in pairs if ours != value]
    if wrong:
        raise T2IError(f"{where}: the G3 config does not describe these models: {'; '.join(wrong)}. Set the model.<field> "
                       f"settings to the folders' sizes (g3_coco: BERT-base and GPT-2 small) or use folders of the config's size")


def check_tied(decoder, where: str) -> None:
    """The GPT-2 LM head must be its input embedding matrix (GPT-2's tie; a resize keeps it)."""
    head, emb = decoder.get_output_embeddings(), decoder.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        raise T2IError(f"{where}: GPT-2's LM head is not tied to its input embeddings (tie_word_embeddings false?); G3 "
                       f"predicts image codes with the embedding matrix, as GPT-2 predicts words")


def _folder_config(path: str, model_type: str, setting: str):
    """The transformers config of a local folder, after checking it is one of ``model_type``."""
    from transformers import BertConfig, GPT2Config

    where = f"model.{setting}={path}"
    p = Path(path)
    if not p.exists():
        raise T2IError(f"{where}: no such folder; give a local {model_type} folder (config.json and model.safetensors, "
                       f"as save_pretrained writes them); models are never downloaded")
    if not p.is_dir():
        raise T2IError(f"{where}: a file, not a {model_type} folder")
    try:
        found = json.loads((p / "config.json").read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        raise T2IError(f"{where}: no config.json; not a transformers model folder") from None
    except (OSError, ValueError, AttributeError) as e:
        raise T2IError(f"{where}: config.json does not read as a transformers config ({e})") from None
    if found != model_type:
        raise T2IError(f"{where}: config.json has model_type {found!r}, not {model_type!r}; "
                       f"model.bert takes a BERT folder and model.gpt2 a GPT-2 folder")
    if not weight_files(p):
        raise T2IError(f"{where}: no weights (model.safetensors or pytorch_model.bin, or their shards)")
    return {"bert": BertConfig, "gpt2": GPT2Config}[model_type].from_pretrained(str(p), local_files_only=True)


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers reads from ``folder``: its safetensors when there are any,
    else its .bin files; with their shard index."""
    for pattern in ("*.safetensors", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found + sorted(folder.glob(pattern + ".index.json"))
    return []


def folder_record(path: str) -> dict:
    """Where a warm start's weights came from: the folder as given and each weight file's sha256
    (the value the Hugging Face hub lists for an LFS file, so a record can be checked against it)."""
    files = {}
    for f in weight_files(Path(path)):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        files[f.name] = h.hexdigest()
    return {"folder": path, "sha256": files}


def _plain(d: dict) -> dict:
    """A transformers config dict as plain JSON values (a checkpoint is read with weights_only)."""
    return json.loads(json.dumps(d))


class G3(nn.Module):
    kind = "g3"

    def __init__(self, cfg: G3Config) -> None:
        super().__init__()
        from t2i_data.extras import require

        require("transformers", "the G3 prior (a transformers BERT encoder and GPT-2 decoder)")
        from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config

        if cfg.bert:
            self.model, cfg = self._from_folders(cfg)
            where = f"model.gpt2={cfg.pretrained['gpt2']['folder']}"
        else:
            if cfg.encoder_config:
                enc, dec = BertConfig.from_dict(dict(cfg.encoder_config)), GPT2Config.from_dict(dict(cfg.decoder_config))
                where = "G3 encoder_config / decoder_config"
            else:
                enc, dec = _random_configs(cfg)
                where = "G3 config"
            check_hf_configs(cfg, enc, dec, where)
            self.model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
        check_tied(self.model.decoder, where)
        self.cfg = cfg
        self.model.encoder.pooler = None  # unused here; an unused parameter would leave DDP's buckets unreduced
        self.model.config.decoder_start_token_id = cfg.image_vocab
        self.model.config.pad_token_id = cfg.pad_id

    @staticmethod
    def _from_folders(cfg: G3Config):
        """(EncoderDecoderModel warm-started from ``cfg.bert`` / ``cfg.gpt2``, the config that rebuilds it)."""
        from transformers import EncoderDecoderModel

        enc = _folder_config(cfg.bert, "bert", "bert")
        dec = _folder_config(cfg.gpt2, "gpt2", "gpt2")
        check_hf_configs(cfg, enc, dec, f"model.bert={cfg.bert} model.gpt2={cfg.gpt2}", dec_vocab=False)
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                cfg.bert, cfg.gpt2, encoder_local_files_only=True, decoder_local_files_only=True,
                encoder_dtype=torch.float32, decoder_dtype=torch.float32, decoder_add_cross_attention=True)
        except (OSError, ValueError, RuntimeError) as e:  # damaged weight files, shapes that do not fit config.json
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise T2IError(f"model.bert={cfg.bert} model.gpt2={cfg.gpt2}: transformers could not load the weights ({first})") from None
        decoder, old, v1 = model.decoder, dec.vocab_size, cfg.image_vocab + 1
        check_tied(decoder, f"model.gpt2={cfg.gpt2}")
        decoder.resize_token_embeddings(v1, mean_resizing=False)
        if old < v1:  # rows past GPT-2's vocabulary: seeded, independent of torch's global generator
            std = decoder.config.initializer_range
            g = torch.Generator().manual_seed(cfg.init_seed)
            rows = torch.empty(v1 - old, cfg.width).normal_(0.0, std, generator=g)
            with torch.no_grad():
                decoder.get_input_embeddings().weight[old:] = rows
        decoder.config.bos_token_id = decoder.config.eos_token_id = cfg.image_vocab
        saved = replace(cfg, bert="", gpt2="", encoder_config=_plain(model.encoder.config.to_dict()),
                        decoder_config=_plain(decoder.config.to_dict()),
                        pretrained={"bert": folder_record(cfg.bert), "gpt2": folder_record(cfg.gpt2), "init_seed": cfg.init_seed,
                                    "gpt2_vocab": old})
        return model, saved

    @property
    def bos(self) -> int:
        return self.cfg.image_vocab

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict:
        c = self.cfg
        check_shape(text, (None, c.text_len), "G3 text tokens")
        check_shape(image, (None, c.grid * c.grid), "G3 image tokens (flattened grid)")
        check_ids(G3_text_tokens=(text, c.text_vocab), G3_image_tokens=(image, c.image_vocab))
        dec_in = torch.cat([torch.full_like(image[:, :1], self.bos), image[:, :-1]], dim=1)
        out = self.model(input_ids=text, attention_mask=(text != c.pad_id).long(), decoder_input_ids=dec_in)
        logits = out.logits[..., : c.image_vocab]  # BOS is never a target
        return image_token_loss(logits, image)

    @torch.no_grad()
    def generate(self, text: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Greedy (temperature 0) or sampled decoding, one token at a time with transformers' KV cache."""
        from .attention import sample_next

        c = self.cfg
        check_shape(text, (None, c.text_len), "G3 text tokens")
        check_ids(G3_text_tokens=(text, c.text_vocab))
        mask = (text != c.pad_id).long()
        enc = self.model.get_encoder()(input_ids=text, attention_mask=mask)
        ids = torch.full((text.shape[0], 1), self.bos, dtype=torch.long, device=text.device)
        past = None
        for _ in range(c.grid * c.grid):
            inp = ids[:, -1:] if (use_cache and past is not None) else ids
            out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=inp, past_key_values=past if use_cache else None,
                             use_cache=use_cache)
            past = out.past_key_values if use_cache else None
            nxt = sample_next(out.logits[:, -1, : c.image_vocab], temperature, top_k, top_p, generator)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
        return ids[:, 1:]

    def config_dict(self) -> dict:
        return asdict(self.cfg)
