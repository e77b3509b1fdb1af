import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i_models.blocks import ChangeChannels, DownSampleX2, Residual, UpSampleX2
from t2i_models.builders import CONFIGS, build_autoencoder
from t2i_models.dvae import DVAEConfig
from t2i_models.vqvae import EMACodebook


def test_block_shapes():
    x = torch.randn(2, 8, 16, 12)
    assert ChangeChannels(8, 5)(x).shape == (2, 5, 16, 12)
    assert DownSampleX2(8, 16)(x).shape == (2, 16, 8, 6)
    assert UpSampleX2(8, 4)(x).shape == (2, 4, 32, 24)
    assert Residual(8)(x).shape == x.shape


@pytest.mark.parametrize("name", ["dvae_tiny", "vqvae_tiny", "dvae_mdmnist", "vqvae_cub64"])
def test_model_shapes_and_mismatch_messages(name):
    torch.manual_seed(0)
    m = build_autoencoder(name).eval()
    s, g = m.cfg.image_size, m.cfg.grid
    x = torch.rand(2, 3, s, s)
    tokens = m.encode(x)
    assert tokens.shape == (2, g, g) and tokens.dtype == torch.int64 and int(tokens.max()) < m.cfg.vocab_size
    assert m.decode(tokens).shape == (2, 3, s, s)
    with pytest.raises(ValueError, match=rf"input: expected shape \('\*', 3, {s}, {s}\), got \(2, 3, {s}, {s + 4}\)"):
        m.encode(torch.rand(2, 3, s, s + 4))
    with pytest.raises(ValueError, match=rf"tokens: expected shape \('\*', {g}, {g}\), got \(2, {g}, {g - 1}\)"):
        m.decode(tokens[:, :, 1:])


def test_thesis_configurations():
    md, cub = CONFIGS["dvae_mdmnist"], CONFIGS["dvae_cub128"]
    assert (md.vocab_size, md.hidden, md.downsamples, md.n_rd, md.n_rb, md.grid) == (256, 256, 2, 4, 4, 32)
    assert (cub.vocab_size, cub.hidden, cub.downsamples, cub.n_rd, cub.n_rb, cub.grid) == (512, 512, 2, 6, 4, 32)
    assert CONFIGS["dvae_cub64"].grid == 16
    assert CONFIGS["vqvae_cub128"].beta == 0.25 and CONFIGS["vqvae_cub128"].decay == 0.99 and CONFIGS["vqvae_cub128"].eps == 1e-5
    assert CONFIGS["vqvae_cub128"].dim == 512 and CONFIGS["vqvae_mdmnist"].dim == 256  # Table 5's note: dimension = vocabulary size


def test_tau_and_lambda_schedules():
    c = DVAEConfig(tau_start=1.0, tau_end=0.0625, tau_steps=1000, kl_weight=6.6, kl_steps=100)
    assert [c.tau(s) for s in (0, 500, 1000, 5000)] == [1.0, pytest.approx(0.53125), 0.0625, 0.0625]
    assert [c.kl_lambda(s) for s in (0, 25, 100, 10**6)] == [0.0, pytest.approx(1.65), pytest.approx(6.6), pytest.approx(6.6)]
    fixed = DVAEConfig(kl_weight=0.01, kl_steps=0)  # thesis Table 6: one value from the start
    assert [fixed.kl_lambda(s) for s in (0, 1, 3000)] == [0.01, 0.01, 0.01]


def test_ema_update_matches_a_hand_computed_example():
    cb = EMACodebook(vocab_size=2, dim=1, decay=0.5, eps=1e-5)
    cb.codebook.copy_(torch.tensor([[0.5], [3.0]]))
    cb.embed_sum.copy_(cb.codebook)
    cb.cluster_size.fill_(1.0)
    storage = cb.codebook.data_ptr()
    z = torch.tensor([[0.0], [1.0], [4.0]])
    idx = cb.nearest(z)
    assert idx.tolist() == [0, 0, 1]
    cb.update(z, idx)
    # N = 0.5·[1, 1] + 0.5·[2, 1] = [1.5, 1.0]; m = 0.5·[0.5, 3.0] + 0.5·[1.0, 4.0] = [0.75, 3.5]
    assert cb.cluster_size.tolist() == [1.5, 1.0] and cb.embed_sum.flatten().tolist() == [0.75, 3.5]
    n, eps = 2.5, 1e-5
    smoothed = [(1.5 + eps) / (n + 2 * eps) * n, (1.0 + eps) / (n + 2 * eps) * n]
    assert cb.codebook.flatten().tolist() == pytest.approx([0.75 / smoothed[0], 3.5 / smoothed[1]], rel=1e-6)
    assert cb.codebook.data_ptr() == storage  # updated in place: a buffer, never a new Parameter


def test_vq_codebook_moves_only_by_the_ema():
    torch.manual_seed(0)
    m = build_autoencoder("vqvae_tiny", restart_threshold=0.0)
    assert not any(p is m.codebook.codebook for p in m.parameters())
    assert {"codebook.codebook", "codebook.cluster_size", "codebook.embed_sum"} <= set(m.state_dict())
    x = torch.rand(4, 3, 32, 32)
    m.init_output_bias(x)  # data-dependent init (the trainer's first batch)
    m(x)  # one EMA step
    before = m.codebook.codebook.clone()
    z = m.latents(x).detach().permute(0, 2, 3, 1).reshape(-1, m.cfg.dim)
    idx = m.codebook.nearest(z)
    expect = EMACodebook(m.cfg.vocab_size, m.cfg.dim, m.cfg.decay, m.cfg.eps)
    expect.load_state_dict({k.split(".", 1)[1]: v.clone() for k, v in m.state_dict().items() if k.startswith("codebook.")})
    expect.update(z, idx)
    m(x)
    assert not torch.equal(before, m.codebook.codebook)
    assert torch.allclose(m.codebook.codebook, expect.codebook, atol=1e-5)


@pytest.fixture(scope="module")
def md64():
    from t2i_data.mdmnist import MDMNISTConfig, render_sample
    from t2i_data.pngio import decode_image

    imgs = np.stack([decode_image(render_sample(MDMNISTConfig(seed=0), "train", i)["png"]) for i in range(64)])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    return F.avg_pool2d(x, 4)  # 128 → 32 px: the tiny models' size, to keep the test inside CI's budget


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dvae_tiny", "vqvae_tiny"])
def test_tiny_autoencoder_overfits_64_mdmnist_images(md64, name):
    """400 full-batch Adam steps: the reconstruction from the tokens (argmax / nearest code) must
    reach MSE < 0.002; predicting the mean image gives 0.0055 on these images."""
    torch.manual_seed(0)
    m = build_autoencoder(name)
    m.init_output_bias(md64)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(400):
        out = m(md64, step=step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        mse = float(((m.decode(m.encode(md64)) - md64) ** 2).mean())
    assert float(((md64 - md64.mean(0, keepdim=True)) ** 2).mean()) > 0.005
    assert mse < 0.002, mse
