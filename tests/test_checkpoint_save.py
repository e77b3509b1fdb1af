"""Checkpoint writes that fail (a full disk) or follow a failed one."""
import errno

import pytest
import torch

from t2i_data.errors import T2IError
from t2i_models.checkpoint import load_checkpoint_dict, save_checkpoint
from t2i_models.prior_builders import g1_tiny


def test_a_full_disk_gives_one_message_leaves_no_partial_and_the_retry_works(tmp_path, monkeypatch):
    model = g1_tiny()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, "t2i-prior/1", step=1)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"\0" * 4096)  # part of the file written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(T2IError, match=rf"{path}: could not write the checkpoint \(\[Errno 28\] No space left on device; [\d,]+ bytes "
                                       r"free there\); the previous last.pt is unchanged"):
        save_checkpoint(path, model, "t2i-prior/1", step=2)
    assert not (tmp_path / "last.pt.partial").exists()
    assert load_checkpoint_dict(path)["step"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    save_checkpoint(path, model, "t2i-prior/1", step=2)
    assert load_checkpoint_dict(path)["step"] == 2


def test_a_leftover_partial_from_an_interrupted_save_is_replaced(tmp_path):
    (tmp_path / "last.pt.partial").write_bytes(b"\1" * (1 << 20))  # e.g. killed during torch.save
    save_checkpoint(tmp_path / "last.pt", g1_tiny(), "t2i-prior/1", step=3)
    assert not (tmp_path / "last.pt.partial").exists() and load_checkpoint_dict(tmp_path / "last.pt")["step"] == 3
    (tmp_path / "blocked.pt.partial").mkdir()  # not removable as a file: one message, no traceback
    (tmp_path / "blocked.pt.partial" / "x").write_text("x")
    with pytest.raises(T2IError, match=r"blocked.pt: could not write the checkpoint .*no blocked.pt was written"):
        save_checkpoint(tmp_path / "blocked.pt", g1_tiny(), "t2i-prior/1", step=3)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(codebook_dim=8), r"config has field\(s\) codebook_dim that this t2i does not know"),
    (lambda c: c.update(vocab=16), r"config has field\(s\) vocab that this t2i does not know"),  # both names: not an old file
    (lambda c: c.update(hidden=c["hidden"] * 2), "its weights do not fit the model its config describes"),
])
def test_an_autoencoder_checkpoint_from_another_version_stops_with_one_message(tmp_path, edit, message):
    """Unknown config fields or weights of another shape: one T2IError naming the file, no TypeError
    or RuntimeError traceback (an old file that names the codebook size "vocab" loads: the test below)."""
    import torch

    from t2i_data.errors import T2IError
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import load_autoencoder, save_autoencoder

    path = tmp_path / "ae.pt"
    save_autoencoder(path, build_autoencoder("dvae_tiny", image_size=32, hidden=8, vocab_size=16))
    ck = torch.load(path, weights_only=True)
    edit(ck["config"])
    torch.save(ck, path)
    with pytest.raises(T2IError, match=message) as e:
        load_autoencoder(path)
    assert str(path) in str(e.value)


def test_an_autoencoder_checkpoint_that_names_the_codebook_size_vocab_still_loads(tmp_path):
    import torch

    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import load_autoencoder, save_autoencoder

    path = tmp_path / "ae.pt"
    torch.manual_seed(0)
    model = build_autoencoder("dvae_tiny", image_size=32, hidden=8, vocab_size=16)
    save_autoencoder(path, model)
    ck = torch.load(path, weights_only=True)
    ck["config"]["vocab"] = ck["config"].pop("vocab_size")
    torch.save(ck, tmp_path / "old.pt")
    old, _ = load_autoencoder(tmp_path / "old.pt")
    x = torch.rand(2, 3, 32, 32)
    assert old.cfg.vocab_size == 16 and torch.equal(old.encode(x), load_autoencoder(path)[0].encode(x))


def test_a_prior_checkpoint_from_before_the_thesis_mlp_loads_with_its_own_architecture(tmp_path):
    """Issue 17 gave g1_mdmnist / g2_mdmnist an MLP of 512 with ReLU (Table 4/6); a checkpoint saved
    when the builder meant a 4·width GELU MLP still loads, from the config saved in it, not the
    builder's new defaults, and predicts exactly as before."""
    from t2i_models.checkpoint import load_prior, save_prior
    from t2i_models.prior_builders import g1_mdmnist, g2_mdmnist

    for build, kind in ((g1_mdmnist, "g1"), (g2_mdmnist, "g2")):
        torch.manual_seed(0)
        layers = dict(layers=1) if kind == "g1" else dict(encoder_layers=1, decoder_layers=1)
        old = build(width=32, heads=2, mlp=0, activation="gelu", text_causal=False, **layers) if kind == "g1" else \
            build(width=32, heads=2, mlp=0, activation="gelu", **layers)
        path = tmp_path / f"{kind}.pt"
        save_prior(path, old, train_config={"arch": f"{kind}_mdmnist", "model": dict(width=32, heads=2, **layers)},
                   tokens=dict(text_vocab=24, text_len=12, pad_id=20, image_vocab=256, grid=32))
        loaded, ck = load_prior(path)
        assert loaded.cfg.mlp == 0 and loaded.cfg.activation == "gelu" and ck["kind"] == kind
        text, image = torch.randint(0, 20, (2, 12)), torch.randint(0, 256, (2, 32 * 32))
        old.eval()
        assert torch.equal(loaded(text, image)["image_logits"], old(text, image)["image_logits"])
