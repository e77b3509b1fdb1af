"""Issue 17's model settings: the dVAE's KL schedule and usage modes, the VQ-VAE's loss-learned
codebook, sync-free code usage, the priors' causal fast path, loss_per_sample, the MLP options and
every builder override."""
import math

import pytest
import torch
import torch.nn.functional as F

from t2i_data.errors import T2IError
from t2i_models.attention import Attention, Block
from t2i_models.blocks import code_usage
from t2i_models.builders import CONFIGS, build_autoencoder
from t2i_models.clip import clip_tiny
from t2i_models.dvae import DVAEConfig, usage_kl
from t2i_models.prior_builders import g1_mdmnist, g1_tiny, g2_cub64, g2_cub128, g2_mdmnist, g2_tiny, prior_from_config

PAD = 20


def batch(seed=0, b=4, padded=True):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 20, (b, 12), generator=g)
    if padded:
        text[0, 8:] = PAD
        text[2, 5:] = PAD
    return text, torch.randint(0, 32, (b, 16), generator=g)


# -- dVAE ------------------------------------------------------------------------------------------
def test_kl_steps_zero_is_the_weight_from_step_zero_else_a_ramp_from_kl_start():
    fixed = DVAEConfig(kl_weight=0.01, kl_steps=0)  # Table 6: "KL coef. value 0.01"
    assert [fixed.kl_lambda(s) for s in (0, 1, 10**6)] == [0.01, 0.01, 0.01]
    ramp = DVAEConfig(kl_start=0.002, kl_weight=0.001, kl_steps=100)
    assert [ramp.kl_lambda(s) for s in (0, 50, 100, 500)] == pytest.approx([0.002, 0.0015, 0.001, 0.001])
    table7 = DVAEConfig(kl_start=0.0, kl_weight=0.001, kl_steps=70_000)  # Table 7, CUB 64
    assert table7.kl_lambda(35_000) == pytest.approx(0.0005)


def test_usage_kl_per_image_and_per_batch_by_hand():
    """Two images on V = 4 codes, one using only code 0, the other only code 1: the batch uses
    half the codes evenly (KL log 2), each image a single code (KL log 4)."""
    logits = torch.full((2, 4, 3, 3), -60.0)
    logits[0, 0] = 60.0
    logits[1, 1] = 60.0
    assert float(usage_kl(logits, "batch")) == pytest.approx(math.log(2), abs=1e-6)
    assert float(usage_kl(logits, "image")) == pytest.approx(math.log(4), abs=1e-6)
    uniform = torch.zeros(3, 4, 2, 2)
    assert float(usage_kl(uniform, "batch")) == pytest.approx(0, abs=1e-6) and float(usage_kl(uniform, "image")) == pytest.approx(0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 8, 4, 4, generator=g) * 3
    p = F.softmax(r, dim=1)
    per_image = [(q * torch.log(q * 8)).sum() for q in p.mean(dim=(2, 3))]
    assert float(usage_kl(r, "image")) == pytest.approx(float(sum(per_image) / 3), rel=1e-5)


@pytest.mark.parametrize("mode", ["batch", "image"])
def test_dvae_forward_reports_the_kl_of_its_mode_and_weights_it(mode):
    torch.manual_seed(0)
    m = build_autoencoder("dvae_tiny", kl_mode=mode, kl_steps=0, kl_weight=0.5)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = m(x, step=0, generator=torch.Generator().manual_seed(1))
        assert float(out["kl"]) == pytest.approx(float(usage_kl(m.logits(x), mode)), rel=1e-5)
    assert out["lambda"] == 0.5
    assert float(out["loss"]) == pytest.approx(float(out["rec"]) + 0.5 * float(out["kl"]), rel=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("kl_mode", "images", "dvae_mdmnist: kl_mode must be one of batch, image, got 'images'"),
    ("kl_steps", -1, "model.kl_steps: needs a number of at least 0, got -1"),
    ("kl_weight", -0.1, "kl_start and kl_weight must be >= 0"),
])
def test_bad_dvae_settings_are_one_message(field, value, message):
    with pytest.raises(T2IError, match=message):
        build_autoencoder("dvae_mdmnist", **{field: value})


# -- code usage --------------------------------------------------------------------------------------
def _old_code_usage(tokens, vocab_size):
    usage = torch.bincount(tokens.flatten(), minlength=vocab_size).float()
    p = usage[usage > 0] / usage.sum()
    return {"perplexity": torch.exp(-(p * p.log()).sum()), "used": (usage > 0).float().mean()}


@pytest.mark.parametrize("case", ["random", "one-code", "all-codes", "skewed", "grid"])
def test_code_usage_equals_the_bincount_formula(case):
    g = torch.Generator().manual_seed(3)
    v = 16
    tokens = {"random": torch.randint(0, v, (4, 8, 8), generator=g), "one-code": torch.full((2, 4, 4), 5),
              "all-codes": torch.arange(v).repeat(3), "skewed": torch.tensor([0] * 50 + [1] * 3 + [15]),
              "grid": torch.randint(0, 3, (1, 32, 32), generator=g)}[case]
    new, old = code_usage(tokens, v), _old_code_usage(tokens, v)
    assert new["perplexity"].dim() == 0 and new["used"].dim() == 0 and new["perplexity"].dtype == torch.float32
    assert float(new["perplexity"]) == pytest.approx(float(old["perplexity"]), rel=1e-6)
    assert float(new["used"]) == float(old["used"])
    if case == "all-codes":
        assert float(new["perplexity"]) == pytest.approx(v)


# -- VQ-VAE ------------------------------------------------------------------------------------------
def test_thesis_vqvaes_use_the_vocabulary_size_as_codeword_size():
    for name in ("vqvae_mdmnist", "vqvae_cub64", "vqvae_cub128"):
        assert CONFIGS[name].dim == CONFIGS[name].vocab_size  # Table 5's note
    assert (CONFIGS["vqvae_mdmnist"].dim, CONFIGS["vqvae_cub128"].dim) == (256, 512)


def test_ema_codebook_keeps_its_state_dict_names_and_has_no_codebook_parameters():
    m = build_autoencoder("vqvae_tiny")
    assert m.codebook_parameters() == []
    names = {k for k in m.state_dict() if k.startswith("codebook.")}
    assert names == {"codebook.codebook", "codebook.cluster_size", "codebook.embed_sum", "codebook.initialized"}
    fresh = build_autoencoder("vqvae_tiny")
    fresh.load_state_dict(m.state_dict(), strict=True)


def test_loss_codebook_is_a_parameter_learned_by_the_codebook_loss():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_tiny", codebook="loss", restart_threshold=0.0)
    (book,) = m.codebook_parameters()
    assert book is m.codebook.codebook and any(p is book for p in m.parameters()) and book.shape == (32, 16)
    assert "codebook.embed_sum" not in m.state_dict()
    x = torch.rand(2, 3, 32, 32)
    m.init_output_bias(x)
    out = m(x)
    parts = float(out["rec"]) + float(out["codebook_loss"]) + 0.25 * float(out["commit"])
    assert float(out["loss"].detach()) == pytest.approx(parts, rel=1e-6)
    out["loss"].backward()
    # d/de_k of mean ||sg[z] - e||^2 over N·D entries: 2 Σ_{i→k} (e_k − z_i) / (N·D); unused codes get none
    z = m.latents(x).detach().permute(0, 2, 3, 1).reshape(-1, 16)
    idx = m.codebook.nearest(z)
    expect = torch.zeros_like(book)
    expect.index_add_(0, idx, 2 * (book.detach()[idx] - z) / z.numel())
    assert torch.allclose(book.grad, expect, atol=1e-6)
    unused = torch.ones(32, dtype=torch.bool)
    unused[idx] = False
    assert unused.any() and not book.grad[unused].any()
    with pytest.raises(T2IError, match="codebook must be one of ema, loss, got 'adam'"):
        build_autoencoder("vqvae_tiny", codebook="adam")


@pytest.mark.parametrize("codebook", ["ema", "loss"])
def test_codebook_starts_from_data_in_init_output_bias_not_in_forward(codebook):
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_tiny", codebook=codebook)
    x = torch.rand(4, 3, 32, 32)
    before = m.codebook.codebook.detach().clone()
    out = m(x)  # an uninitialised codebook still trains (on its random start)
    assert torch.isfinite(out["loss"]) and not bool(m.codebook.initialized)
    m = build_autoencoder("vqvae_tiny", codebook=codebook)
    bn = {k: v.clone() for k, v in m.encoder.named_buffers()}
    m.init_output_bias(x)
    assert bool(m.codebook.initialized)
    assert all(torch.equal(v, dict(m.encoder.named_buffers())[k]) for k, v in bn.items())  # BN statistics untouched
    z = m.latents(x).detach().permute(0, 2, 3, 1).reshape(-1, 16)  # train mode: the same batch statistics
    d = ((m.codebook.codebook.detach()[:, None] - z[None]) ** 2).sum(-1)  # (V, N), exact
    assert float(d.min(dim=1).values.max()) == 0.0  # every codeword is one of the batch's encoder outputs
    assert not torch.allclose(m.codebook.codebook.detach(), before)
    again = m.codebook.codebook.detach().clone()
    m.init_output_bias(torch.rand(4, 3, 32, 32))  # once only
    assert torch.equal(m.codebook.codebook.detach(), again)


def test_restart_dead_codes_without_reading_back_counts():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_tiny")
    cb = m.codebook
    cb.cluster_size.copy_(torch.tensor([1.0, 0.01] * 16))
    kept = cb.codebook[0::2].clone()
    z = torch.randn(10, 16)
    n = cb.restart_dead(z, 0.05, torch.Generator().manual_seed(0))
    assert torch.is_tensor(n) and int(n) == 16
    assert torch.equal(cb.codebook[0::2], kept)
    assert float(((cb.codebook[1::2, None] - z[None]) ** 2).sum(-1).min(dim=1).values.max()) == 0.0
    assert cb.cluster_size.tolist() == [1.0] * 32 and torch.equal(cb.embed_sum[1::2], cb.codebook[1::2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device syncs exist only with a GPU")
@pytest.mark.parametrize("name, over", [("dvae_tiny", {}), ("dvae_tiny", {"kl_mode": "image"}), ("vqvae_tiny", {}),
                                        ("vqvae_tiny", {"codebook": "loss"})])
def test_autoencoder_training_step_never_syncs_with_the_host(name, over):
    torch.manual_seed(0)
    m = build_autoencoder(name, **over).cuda()
    x = torch.rand(4, 3, 32, 32, device="cuda")
    m.init_output_bias(x)
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = m(x, step=3, generator=gen)
        out["loss"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# -- attention fast path -----------------------------------------------------------------------------
FAST_CASES = {
    "g1-causal-mask": lambda: g1_tiny(text_causal=True, dropout=0.1, mlp=48, activation="relu"),
    "g1-causal-learned": lambda: g1_tiny(text_causal=True, pad="learned", dropout=0.1, text_loss_weight=0.125),
    "g1-bidirectional": lambda: g1_tiny(dropout=0.1),
    "g2": lambda: g2_tiny(dropout=0.1),
}


def _reference(m):
    ref = type(m)(m.cfg)
    ref.load_state_dict(m.state_dict())
    ref.fast_attention = False
    return ref.train(m.training)


@pytest.mark.parametrize("name", FAST_CASES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_fast_path_equals_the_explicit_masks(name, padded, train):
    torch.manual_seed(0)
    m = FAST_CASES[name]().train(train)
    ref = _reference(m)
    for seed in (0, 1, 2):
        text, image = batch(seed, padded=padded)
        torch.manual_seed(10 + seed)  # the same dropout draws on both paths
        a = m(text, image)
        torch.manual_seed(10 + seed)
        b = ref(text, image)
        assert torch.allclose(a["image_logits"], b["image_logits"], atol=1e-5)
        assert torch.allclose(a["loss_per_sample"], b["loss_per_sample"], atol=1e-5)


@pytest.mark.parametrize("name", FAST_CASES)
@pytest.mark.parametrize("padded", [False, True])
def test_fast_path_sampling_equals_the_explicit_masks_with_and_without_cache(name, padded):
    torch.manual_seed(1)
    m = FAST_CASES[name]().eval()
    ref = _reference(m)
    text, _ = batch(5, padded=padded)
    for use_cache in (True, False):
        for kw in ({"temperature": 0}, {"top_k": 5}):
            a = m.generate(text, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **kw)
            b = ref.generate(text, generator=torch.Generator().manual_seed(7), use_cache=use_cache, **kw)
            assert torch.equal(a, b), (use_cache, kw)


def _sdpa_calls(monkeypatch):
    import t2i_models.attention as attention

    calls = []
    real = attention.F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
        calls.append((attn_mask is None, is_causal, q.shape[2], k.shape[2]))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    return calls


def test_which_attentions_get_a_mask(monkeypatch):
    """No mask and is_causal wherever the attention is exactly causal; masks only for padding or
    a bidirectional text prefix."""
    calls = _sdpa_calls(monkeypatch)
    g1 = g1_tiny(text_causal=True).eval()
    g1(*batch(padded=False))
    assert calls and all(c[:2] == (True, True) for c in calls)
    calls.clear()
    g1(*batch(padded=True))  # pad="mask" with padding: masked
    assert all(c[:2] == (False, False) for c in calls)
    calls.clear()
    g1_tiny(text_causal=True, pad="learned").eval()(*batch(padded=True))  # learned padding needs no mask
    assert all(c[:2] == (True, True) for c in calls)
    calls.clear()
    g1_tiny().eval()(*batch(padded=False))  # bidirectional text prefix: a mask
    assert all(c[:2] == (False, False) for c in calls)
    calls.clear()
    g2 = g2_tiny().eval()  # 2 encoder blocks, 2 decoder blocks (self, cross)
    g2(*batch(padded=False))
    assert calls == [(True, False, 12, 12)] * 2 + [(True, True, 16, 16), (True, False, 16, 12)] * 2
    calls.clear()
    g2(*batch(padded=True))
    assert calls == [(False, False, 12, 12)] * 2 + [(True, True, 16, 16), (False, False, 16, 12)] * 2
    calls.clear()
    g1.generate(batch(padded=False)[0][:1], temperature=0)  # cache: the prefix causal, then one query at a time, no mask
    assert calls[0] == (True, True, 13, 13) and all(c == (True, False, 1, c[3]) for c in calls[2:])


def test_causal_attention_over_a_cache_aligns_bottom_right():
    torch.manual_seed(0)
    att = Attention(32, 4, 0.0).eval()
    x = torch.randn(2, 9, 32)
    whole = att(x, causal=True)
    cache = {}
    first = att(x[:, :4], causal=True, cache=cache)
    rest = att(x[:, 4:], causal=True, cache=cache)  # 5 queries after 4 cached keys
    assert torch.allclose(torch.cat([first, rest], dim=1), whole, atol=1e-6)


# -- loss per sample ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [g1_tiny, lambda: g1_tiny(text_loss_weight=0.25, pad="learned"), g2_tiny])
def test_loss_per_sample_is_each_samples_own_loss(make):
    torch.manual_seed(0)
    m = make().eval()
    text, image = batch()
    with torch.no_grad():
        out = m(text, image)
    per = out["loss_per_sample"]
    assert per.shape == (4,) and per.dtype == torch.float32
    assert float(out["loss"]) == pytest.approx(float(per.mean()), rel=1e-6)
    for i in range(4):  # alone in its batch, a sample has the same loss
        with torch.no_grad():
            alone = m(text[i : i + 1], image[i : i + 1])["loss"]
        assert float(alone) == pytest.approx(float(per[i]), rel=1e-5)
    if m.cfg.__class__.__name__ == "G1Config" and m.cfg.text_loss_weight == 0:
        ce = F.cross_entropy(out["image_logits"].float().transpose(1, 2), image, reduction="none").mean(dim=1)  # train_prior's formula
        assert torch.allclose(per, ce, atol=1e-6)


def test_g1_text_term_is_a_mean_over_each_samples_real_targets():
    torch.manual_seed(0)
    m = g1_tiny(text_loss_weight=0.5).eval()
    seen = []
    m.text_head.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    text, image = batch()
    out = m(text, image)
    logits = seen[0]  # (B, L − 1, text_vocab), predicting text[:, 1:]
    img = F.cross_entropy(out["image_logits"].float().transpose(1, 2), image, reduction="none").mean(dim=1)
    for i in range(4):
        keep = text[i, 1:] != PAD  # sample 0 has 7 real targets, sample 2 has 4, the others 11
        txt = F.cross_entropy(logits[i][keep], text[i, 1:][keep])
        assert float(out["loss_per_sample"][i]) == pytest.approx(float(0.5 * txt + 0.5 * img[i]), rel=1e-5)
    assert [int((text[i, 1:] != PAD).sum()) for i in range(4)] == [7, 11, 4, 11]


# -- MLP options ---------------------------------------------------------------------------------------
def test_default_block_keeps_its_state_dict_names_and_the_relu_block_is_table_4():
    gelu = Block(64, 4, 0.1)
    assert [k for k in gelu.state_dict() if k.startswith("mlp.")] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    assert gelu.mlp[0].out_features == 256 and isinstance(gelu.mlp[1], torch.nn.GELU)
    relu = Block(64, 4, 0.1, mlp_hidden=96, activation="relu")
    assert [type(x).__name__ for x in relu.mlp] == ["Linear", "Dropout", "ReLU", "Linear"]  # Table 4
    assert relu.mlp[0].out_features == 96 and relu.mlp[3].in_features == 96
    with pytest.raises(T2IError, match="g2_tiny: activation must be one of gelu, relu, got 'swish'"):
        g2_tiny(activation="swish")
    with pytest.raises(T2IError, match="model.mlp: needs a number of at least 0, got -1"):
        g1_tiny(mlp=-1)


def test_a_checkpoint_config_from_before_the_mlp_fields_rebuilds_its_model():
    torch.manual_seed(0)
    old = g1_tiny()
    config = old.config_dict()
    del config["mlp"], config["activation"]  # as saved before issue 17
    new = prior_from_config("g1", config)
    new.load_state_dict(old.state_dict(), strict=True)
    with pytest.raises(T2IError, match="model.width_x: not a setting of checkpoint"):
        prior_from_config("g2", {**g2_tiny().config_dict(), "width_x": 3})


# -- builders ----------------------------------------------------------------------------------------
CUB_TOKENS = dict(text_vocab=50, text_len=8, pad_id=0, image_vocab=16, grid=4)


def test_thesis_prior_builders():
    g1 = g1_mdmnist().cfg  # Table 6 and the thesis code
    assert (g1.layers, g1.heads, g1.width, g1.mlp, g1.activation, g1.dropout, g1.text_causal) == (12, 8, 256, 512, "relu", 0.1, True)
    g2 = g2_mdmnist().cfg
    assert (g2.encoder_layers, g2.decoder_layers, g2.width, g2.mlp, g2.activation) == (6, 12, 256, 512, "relu")
    c64 = g2_cub64(**CUB_TOKENS, width=64, mlp=64).cfg  # Table 7 depths at a small width
    assert (c64.encoder_layers, c64.decoder_layers, c64.activation, c64.dropout) == (8, 14, "relu", 0.1)
    c128 = g2_cub128(**CUB_TOKENS, width=64, mlp=64).cfg
    assert (c128.encoder_layers, c128.decoder_layers) == (16, 12)
    assert g2_cub64.__doc__ and "14" in g2_cub64.__doc__


@pytest.mark.parametrize("build, over, check", [
    (g1_mdmnist, {"layers": 4}, lambda m: len(m.blocks) == 4),
    (g1_mdmnist, {"layers": 1, "width": 64, "mlp": 0, "activation": "gelu"}, lambda m: m.blocks[0].mlp[0].out_features == 256),
    (g2_cub64, {**CUB_TOKENS, "decoder_layers": 2, "width": 64}, lambda m: len(m.decoder) == 2 and m.decoder[0].mlp[0].out_features == 512),
    (g2_mdmnist, {"encoder_layers": 1, "decoder_layers": 1, "heads": 2}, lambda m: len(m.encoder) == 1 and m.encoder[0].attn.heads == 2),
    (g1_tiny, {"text_causal": True, "pad": "learned"}, lambda m: m.pad_emb is not None),
    (clip_tiny, {"layers": 1}, lambda m: len(m.image_tower.blocks) == 1),
])
def test_builder_overrides(build, over, check):
    assert check(build(**over))


@pytest.mark.parametrize("name, over, check", [
    ("dvae_mdmnist", {"kl_mode": "image", "kl_steps": 0, "kl_weight": 0.01}, lambda c: (c.kl_mode, c.kl_lambda(0)) == ("image", 0.01)),
    ("dvae_tiny", {"tau_start": 5.0, "tau_end": 0.01, "tau_steps": 3000}, lambda c: c.tau(1500) == pytest.approx(2.505)),
    ("vqvae_tiny", {"codebook": "loss", "dim": 32}, lambda c: (c.codebook, c.dim) == ("loss", 32)),
])
def test_autoencoder_builder_overrides(name, over, check):
    assert check(build_autoencoder(name, **over).cfg)


@pytest.mark.parametrize("build, kwargs, what", [
    (g1_mdmnist, {"lyers": 4}, "g1_mdmnist"),
    (g2_cub64, {**CUB_TOKENS, "decoder_blocks": 2}, "g2_cub64"),
    (clip_tiny, {"depth": 2}, "clip_tiny"),
    (lambda **k: build_autoencoder("dvae_mdmnist", **k), {"kl": 1}, "dvae_mdmnist"),
])
def test_unknown_override_names_the_known_fields(build, kwargs, what):
    bad = next(k for k in kwargs if k not in CUB_TOKENS)
    with pytest.raises(T2IError, match=rf"model\.{bad}: not a setting of {what}; known: .*\b(layers|width|vocab_size)\b"):
        build(**kwargs)
