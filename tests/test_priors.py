import pytest
import torch

from t2i_models.prior_builders import g1_tiny, g2_cub128, g2_tiny, g3_tiny

PAD = 20


def batch(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 20, (b, 12), generator=g)
    text[0, 8:] = PAD  # a padded caption
    image = torch.randint(0, 32, (b, 16), generator=g)
    return text, image


PRIORS = {
    "g1-mask": lambda: g1_tiny(),
    "g1-learned-causal-text": lambda: g1_tiny(pad="learned", text_causal=True, text_loss_weight=0.125),
    "g2": lambda: g2_tiny(),
    "g3-bert2gpt2": lambda: g3_tiny(),
}


@pytest.mark.parametrize("name", PRIORS)
def test_a_future_image_token_never_changes_an_earlier_logit(name):
    torch.manual_seed(0)
    m = PRIORS[name]().eval()
    text, image = batch()
    base = m(text, image)["image_logits"]
    for j in (0, 7, 15):
        changed = image.clone()
        changed[:, j] = (changed[:, j] + 1) % 32
        logits = m(text, changed)["image_logits"]
        assert torch.allclose(logits[:, : j + 1], base[:, : j + 1], atol=1e-6)  # position j predicts token j from tokens < j
        if j < 15:
            assert not torch.allclose(logits[:, j + 1 :], base[:, j + 1 :])


@pytest.mark.parametrize("name", PRIORS)
def test_kv_cached_sampling_equals_full_recomputation(name):
    torch.manual_seed(1)
    m = PRIORS[name]().eval()
    text, _ = batch(1)
    assert torch.equal(m.generate(text, temperature=0), m.generate(text, temperature=0, use_cache=False))
    for kw in ({"top_k": 5}, {"top_p": 0.8}, {"temperature": 1.3}):
        a = m.generate(text, generator=torch.Generator().manual_seed(7), **kw)
        b = m.generate(text, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
        assert torch.equal(a, b), kw


def test_g1_text_prefix_visibility_and_padding():
    text, _ = batch()
    bi, causal = g1_tiny(), g1_tiny(text_causal=True)
    m_bi, m_causal = bi._mask(text, 16)[:, 0], causal._mask(text, 16)[:, 0]
    assert m_bi[1, :12, :12].all() and torch.equal(m_causal[1, :12, :12], torch.ones(12, 12, dtype=torch.bool).tril())
    assert not m_bi[0, 12:, 8:12].any()  # image queries never see padding
    assert m_bi[0, 12:, :8].all()  # but see every real text token
    for m in (g1_tiny(), g1_tiny(pad="learned")):
        m.eval()
        text, image = batch()
        before = m(text, image)["image_logits"]
        with torch.no_grad():
            m.text_emb.weight[PAD] += 5.0  # the pad token's own embedding is never used
        assert torch.allclose(m(text, image)["image_logits"], before, atol=1e-6)


def test_text_loss_weight_mixes_the_losses():
    torch.manual_seed(0)
    m = g1_tiny(text_loss_weight=0.125).eval()
    out = m(*batch())
    assert out["loss"].item() == pytest.approx(0.125 * out["loss_text"].item() + 0.875 * out["loss_image"].item())


def test_g2_depends_on_real_text_only_and_survives_all_padding():
    torch.manual_seed(0)
    m = g2_tiny().eval()
    text, image = batch()
    text[2] = PAD
    base = m(text, image)["image_logits"]
    assert torch.isfinite(base).all()
    other = text.clone()
    other[1, 3] = (other[1, 3] + 1) % 20
    assert not torch.allclose(m(other, image)["image_logits"][1], base[1])


@pytest.mark.parametrize("make", [g1_tiny, g2_tiny, g3_tiny])
def test_tiny_prior_memorises_token_samples_and_samples_them_at_temperature_zero(make):
    """Four MD-MNIST descriptions, each with its own 16 image tokens: after 300 Adam steps the
    image loss is below 0.05 nats and greedy sampling from each caption returns its tokens."""
    torch.manual_seed(0)
    m = make()
    text = torch.tensor([[4, 11, 15, 19, 8, 12, 16, 17, 6, 12, 16, 18], [1, 10, 13, 17, 2, 10, 14, 18, 3, 10, 15, 19],
                         [9, 12, 16, 19, 9, 12, 16, 19, 9, 12, 16, 19], [0, 11, 13, 18, 5, 11, 14, 17, PAD, PAD, PAD, PAD]])
    image = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = m(text, image)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert m(text, image)["loss_image"].item() < 0.05
    assert torch.equal(m.generate(text, temperature=0), image)


def test_thesis_prior_configurations():
    m = g2_cub128(text_vocab=5000, text_len=64, pad_id=0, image_vocab=512, grid=32)
    c = m.cfg
    assert (c.encoder_layers, c.decoder_layers, c.width, c.mlp, c.heads) == (16, 12, 512, 512, 8)  # Table 7
    from t2i_models.prior_builders import g1_mdmnist

    g = g1_mdmnist().cfg  # Table 6: MLP hidden 512 (Table 4: ReLU), width 256 as the thesis code
    assert (g.layers, g.heads, g.width, g.mlp, g.activation, g.text_len, g.grid, g.image_vocab) == (12, 8, 256, 512, "relu", 12, 32, 256)


@pytest.mark.parametrize("name", PRIORS)
def test_every_parameter_receives_a_gradient(name):
    """DDP reduces gradients bucket by bucket; one parameter that never gets a gradient leaves its
    bucket, and so the whole reduction, undone (found in G1's text head and BERT's pooler)."""
    torch.manual_seed(0)
    m = PRIORS[name]()
    m(*batch())["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", PRIORS)
def test_an_out_of_range_id_is_refused_with_its_name_never_clamped(name):
    torch.manual_seed(0)
    m = PRIORS[name]().eval()
    text, image = batch()
    prefix = name[:2].upper()
    bad = text.clone()
    bad[1, 3] = 65285  # the id, in a 24-id vocabulary
    with pytest.raises(ValueError, match=f"{prefix} text tokens: id 65285 is outside the vocabulary of 24 ids"):
        m(bad, image)
    with pytest.raises(ValueError, match=f"{prefix} text tokens: id 65285 is outside"):
        m.generate(bad, temperature=0)
    with pytest.raises(ValueError, match=f"{prefix} image tokens: id -1 is outside the vocabulary of 32 ids"):
        m(text, image - 1)
    assert torch.isfinite(m(text, image)["loss"])


def test_pad_id_must_be_a_text_id():
    """One message (a T2IError, so the CLI prints one line), e.g. for token shards whose manifest
    gives a pad id outside its vocabulary."""
    from t2i_data.errors import T2IError

    with pytest.raises(T2IError, match="g1_tiny: pad_id 24 must be a text id, 0..23"):
        g1_tiny(pad_id=24)
    with pytest.raises(T2IError, match="g2_tiny: pad_id 24 must be a text id"):
        g2_tiny(pad_id=24)
