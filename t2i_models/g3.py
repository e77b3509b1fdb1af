"""G3 (optional, the seed report's BERT2GPT2): transformers' EncoderDecoderModel built from a BERT
encoder config and a GPT-2 decoder config with cross-attention. Random initialisation, or local
weights through ``from_pretrained`` on local folders; never the network. The decoder's vocabulary
is V + 1: the image codes and a BOS (id V)."""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from .attention import check_ids, image_token_loss
from .blocks import check_shape
from .g2 import G2Config


class G3Config(G2Config):
    """The same fields as G2: token spaces, encoder / decoder depths, heads, width, MLP width
    (``mlp``, 0: 4 · width: BERT's ``intermediate_size``, GPT-2's ``n_inner``) and ``activation``
    ("gelu": BERT's gelu and GPT-2's gelu_new, their defaults; "relu": ReLU in both).
    ``dropout`` is not passed on: BERT and GPT-2 keep their own 0.1."""


class G3(nn.Module):
    kind = "g3"

    def __init__(self, cfg: G3Config) -> None:
        super().__init__()
        from t2i_data.extras import require

        require("transformers", "the G3 prior (a transformers BERT encoder and GPT-2 decoder)")
        from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config

        self.cfg = cfg
        enc = BertConfig(vocab_size=cfg.text_vocab, hidden_size=cfg.width, num_hidden_layers=cfg.encoder_layers,
                         num_attention_heads=cfg.heads, intermediate_size=cfg.mlp or 4 * cfg.width, max_position_embeddings=cfg.text_len,
                         pad_token_id=cfg.pad_id, hidden_act=cfg.activation)
        dec = GPT2Config(vocab_size=cfg.image_vocab + 1, n_embd=cfg.width, n_layer=cfg.decoder_layers, n_head=cfg.heads,
                         n_inner=cfg.mlp or None, activation_function="gelu_new" if cfg.activation == "gelu" else "relu",
                         n_positions=cfg.grid * cfg.grid, add_cross_attention=True, is_decoder=True,
                         bos_token_id=cfg.image_vocab, eos_token_id=cfg.image_vocab)
        self.model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec))
        self.model.encoder.pooler = None  # unused here; an unused parameter would leave DDP's buckets unreduced
        self.model.config.decoder_start_token_id = cfg.image_vocab
        self.model.config.pad_token_id = cfg.pad_id

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
