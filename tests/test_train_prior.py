import json

import pytest
import torch

from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_models.checkpoint import load_prior
from t2i_models.train_common import lr_at
from t2i_models.train_prior import PriorTrainConfig, train_prior


def cfg(md_tokens, out, **kw):
    base = dict(arch="g1_tiny", image_tokens=str(md_tokens / "img"), text_tokens=str(md_tokens / "text"), out=str(out),
                batch_size=4, num_workers=0, warmup=2, lr=3e-3, log_every=1, ckpt_every=2)
    base.update(kw)
    return PriorTrainConfig(**base)


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resumed_prior_training_continues_exactly(md_tokens, tmp_path):
    train_prior(cfg(md_tokens, tmp_path / "whole", steps=6))
    train_prior(cfg(md_tokens, tmp_path / "cut", steps=6, stop_after=4))  # "killed" after step 4, same config
    train_prior(cfg(md_tokens, tmp_path / "cut", steps=6))
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == list(range(1, 7)) and [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_accumulating_two_micro_batches_equals_one_batch_of_both(md_tokens):
    """The sample sequence does not depend on the batch size, so micro-batches of 2 + 2 hold the
    same four samples as one batch of 4; their window losses give the same gradients."""
    from t2i_data.token_stream import TokenStream
    from t2i_models.prior_builders import g1_tiny
    from t2i_models.train_prior import window_loss

    two = list(TokenStream(md_tokens / "img", md_tokens / "text", batch_size=2, seed=1))[:2]
    four = list(TokenStream(md_tokens / "img", md_tokens / "text", batch_size=4, seed=1))[:1]
    assert [k for b in two for k in b["keys"]] == four[0]["keys"]
    grads = []
    for micro in (two, four):
        torch.manual_seed(0)
        m = g1_tiny(image_vocab=16, grid=32)
        losses, mean, valid = window_loss(m, micro, torch.device("cpu"), False, 1)
        for loss in losses:
            loss.backward()
        grads.append(({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, mean, valid))
    (ga, la, va), (gb, lb, vb) = grads
    assert int(va) == int(vb) == 4 and float(la) == pytest.approx(float(lb), rel=1e-6)
    assert all(torch.allclose(ga[n], gb[n], atol=1e-6, rtol=1e-5) for n in ga)


def test_checkpoint_records_fingerprints_and_samples(md_tokens, tmp_path):
    train_prior(cfg(md_tokens, tmp_path / "r", steps=2, arch="g2_tiny"))
    model, ck = load_prior(tmp_path / "r" / "last.pt")
    tm = json.loads((md_tokens / "text" / "manifest.json").read_text())
    assert ck["fingerprints"]["tokenizer"] == tm["tokenizer"]["fingerprint"]
    text = torch.tensor([[4, 11, 15, 19, 8, 12, 16, 17, 6, 12, 16, 18]])
    out = model.generate(text, temperature=0)
    assert out.shape == (1, 1024) and int(out.max()) < 16
    damaged = torch.load(tmp_path / "r" / "last.pt", weights_only=True)  # one weight changed, fingerprint kept
    name = next(iter(damaged["state_dict"]))
    damaged["state_dict"][name] = damaged["state_dict"][name] + 1
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(T2IError, match="weights do not match the fingerprint recorded in the checkpoint"):
        load_prior(tmp_path / "damaged.pt")
    with pytest.raises(T2IError, match="no such checkpoint"):
        load_prior(tmp_path / "missing.pt")


def test_schedule_and_settings(md_tokens, tmp_path, capsys):
    c = cfg(md_tokens, tmp_path, steps=100, warmup=10, lr=1.0)
    assert lr_at(c, 0, 0, 100) == pytest.approx(0.1) and lr_at(c, 9, 0, 100) == pytest.approx(1.0) and lr_at(c, 100, 3, 100) == pytest.approx(0.1)
    with pytest.raises(T2IError, match="arch must be one of"):
        cfg(md_tokens, tmp_path, arch="g9")
    assert main(["-q", "train", "prior", "arch=g1_tiny", f"image_tokens={md_tokens / 'img'}", f"text_tokens={md_tokens / 'text'}",
                 f"out={tmp_path / 'cli'}", "steps=1", "batch_size=2", "num_workers=0"]) == 0
    assert "trained g1_tiny to step 1" in capsys.readouterr().out
    with pytest.raises(T2IError, match="model.grid come from the token shards' manifests"):
        train_prior(cfg(md_tokens, tmp_path / "clash", steps=1, model={"grid": 8}))


def test_sample_writes_a_prompt_grid_and_refuses_other_tokenizers(md_tokens, tmp_path, capsys):
    from PIL import Image

    from t2i_data.text import train

    train_prior(cfg(md_tokens, tmp_path / "p", steps=2))
    ck = str(tmp_path / "p" / "last.pt")
    args = ["sample", "--prior", ck, "--autoencoder", str(md_tokens / "ae.pt"), "--tokenizer", str(md_tokens / "tk"),
            "--prompt", "4 30 g down 8 40 b up 6 40 b middle", "--prompt", "1 20 w up 2 20 r middle 3 20 b down",
            "--out", str(tmp_path / "grid.png"), "-n", "3", "--top-k", "4"]
    assert main(args) == 0
    assert "2 prompts x 3 samples" in capsys.readouterr().out
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] == 3 * (128 + 4) + 4 and im.size[1] > 2 * 128
    train("word", ["a b c"], None).save(tmp_path / "wrong")
    assert main(args[:6] + [str(tmp_path / "wrong")] + args[7:]) == 2
    assert "is not the one the prior was trained with" in capsys.readouterr().err


def test_shipped_prior_table():
    from pathlib import Path

    from t2i_data.config import table

    values = table(Path(__file__).resolve().parents[1] / "pipelines" / "mdmnist.toml", "train_prior")
    assert PriorTrainConfig(**values).arch == "g1_mdmnist"


@pytest.mark.slow
def test_two_process_ddp_gives_the_gradients_of_one_process_on_the_same_global_batch(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from ddp_prior_worker import global_batch, grads
    from t2i_models.prior_builders import g1_tiny
    from t2i_models.train_prior import window_loss

    here = Path(__file__).resolve().parent
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(here / "ddp_prior_worker.py"), str(tmp_path / "g.pt")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "g.pt", weights_only=True)
    torch.manual_seed(0)
    model = g1_tiny(image_vocab=16, grid=4)
    losses, _, valid = window_loss(model, [global_batch()], torch.device("cpu"), False, 1)
    for loss in losses:
        loss.backward()
    single = grads(model)
    assert int(ddp["valid"]) == int(valid) == 6
    assert set(ddp["grads"]) == set(single) == {n for n, _ in model.named_parameters()}  # every parameter takes part
    assert all(torch.allclose(ddp["grads"][n], single[n], atol=1e-6, rtol=1e-4) for n in single)


def _copy_set(md_tokens, tmp_path, which):
    import shutil

    shutil.copytree(md_tokens / which, tmp_path / which)
    return tmp_path / which


def test_a_resume_that_changes_the_plan_mid_epoch_stops_naming_the_setting(md_tokens, tmp_path):
    """The issue's run: batch_size=4 stop_after=5, then batch_size=8 (20 of 103 samples were never
    seen that epoch); now the rerun stops before training, naming old and new value."""
    train_prior(cfg(md_tokens, tmp_path / "r", steps=30, stop_after=5))
    with pytest.raises(T2IError, match=r"last.pt stopped at batch 5 of epoch 0; this run changes the stream plan: "
                                       r"batch_size 4 → 8\. .*Resume with the old value\(s\).*or start fresh with another out="):
        train_prior(cfg(md_tokens, tmp_path / "r", steps=30, batch_size=8))
    with pytest.raises(T2IError, match=r"seed 0 → 1"):
        train_prior(cfg(md_tokens, tmp_path / "r", steps=30, seed=1))
    assert train_prior(cfg(md_tokens, tmp_path / "r", steps=30, stop_after=1))["step"] == 6  # the same plan resumes


def test_schedule_changes_on_resume_are_warned_and_the_config_is_echoed(md_tokens, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        train_prior(cfg(md_tokens, tmp_path / "r", steps=6, stop_after=2))
    assert 'train prior: {"arch": "g1_tiny", "batch_size": 4' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        train_prior(cfg(md_tokens, tmp_path / "r", steps=20, lr=1e-3, stop_after=1))
    assert "other schedule settings: steps 6 → 20; lr 0.003 → 0.001" in caplog.text


def test_resume_is_exact_at_a_batch_that_is_not_a_multiple_of_the_workers(md_tokens, tmp_path):
    """num_workers=2 stop_after=3, run twice: the second run used to fail ('resume at batch 3 is not
    a multiple of the 2 dataloader workers'); now it continues as the uninterrupted run does."""
    train_prior(cfg(md_tokens, tmp_path / "whole", steps=5, num_workers=2))
    train_prior(cfg(md_tokens, tmp_path / "cut", steps=5, num_workers=2, stop_after=3))
    train_prior(cfg(md_tokens, tmp_path / "cut", steps=5, num_workers=2))
    a, b = metrics(tmp_path / "whole"), metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5] and [r["loss"] for r in a] == [r["loss"] for r in b]
    assert all(r["split"] == "train" and r["lr"] > 0 for r in b)


def test_a_damaged_text_shard_stops_training_naming_it(md_tokens, tmp_path):
    """One byte of a text-token shard gives id 65285 in a 24-id vocabulary: `t2i train prior`
    trained 130 steps on it (G1/G2 clamped the id); now the stream refuses the shard."""
    text = _copy_set(md_tokens, tmp_path, "text")
    victim = text / "mdmnist-train-000001.tar"
    data = bytearray(victim.read_bytes())
    data[512 + 128 + 1] = 0xFF  # the high byte of the first sample's first id (.npy header: 128 bytes)
    victim.write_bytes(bytes(data))
    with pytest.raises(T2IError, match="text/mdmnist-train-000001.tar: sha256 .* the manifest says"):
        train_prior(cfg(md_tokens, tmp_path / "r", steps=40, text_tokens=str(text)))


def test_lost_samples_go_to_metrics_and_stop_the_run_above_max_lost(md_tokens, tmp_path):
    img = _copy_set(md_tokens, tmp_path, "img")
    (img / "mdmnist-train-000004.tar").unlink()  # 16 of 103 samples unreadable
    with pytest.raises(T2IError, match=r"16 of epoch 0's 103 samples could not be read \(mdmnist-train-000004.tar: 16\), "
                                       r"more than max_lost=0.001"):
        train_prior(cfg(md_tokens, tmp_path / "stop", steps=40, image_tokens=str(img)))
    train_prior(cfg(md_tokens, tmp_path / "go", steps=52, image_tokens=str(img), max_lost=0.2, ckpt_every=100))
    rows = metrics(tmp_path / "go")
    lost_rows = [r for r in rows if "lost" in r]
    assert sum(r["lost"] for r in lost_rows) == 32  # 16 in each of two epochs (26 batches of 4 per epoch)
    assert all(r["lost_shards"] == {"mdmnist-train-000004.tar": r["lost"]} for r in lost_rows)
    assert sum(r["valid"] for r in rows if "valid" in r and r["epoch"] == 0) == 103 - 16
    with pytest.raises(T2IError, match="max_lost is a share"):
        cfg(md_tokens, tmp_path, max_lost=5)


def test_epochs_multistep_and_heldout_cross_entropy(md_tokens, tmp_path):
    """103 samples, batch 8: 13 micro-batches an epoch, 4 optimizer steps with grad_accum=4 (the
    last window holds one), so epochs=2 is 8 steps, the rate halved in the second epoch. Held-out
    rows at steps 4 and 8; the last equals the image-token cross-entropy of the final checkpoint
    over the whole set, computed here independently (nats per image token)."""
    import torch.nn.functional as F

    from t2i_data.token_stream import TokenStream

    out = tmp_path / "h"
    res = train_prior(cfg(md_tokens, out, epochs=2, batch_size=8, grad_accum=4, optimizer="adam", lr_schedule="multistep",
                          milestones=[1], lr_gamma=0.5, warmup=0, grad_clip=1.0, eval_image_tokens=str(md_tokens / "img"),
                          eval_text_tokens=str(md_tokens / "text"), eval_every=4))
    assert (res["step"], res["epoch"]) == (8, 1)  # stopped at the end of epoch 1
    rows = metrics(out)
    train_rows = [r for r in rows if r.get("split") == "train"]
    assert [(r["step"], r["epoch"], r["lr"]) for r in train_rows] == [(s, (s - 1) // 4, 3e-3 if s <= 4 else 1.5e-3) for s in range(1, 9)]
    assert [r["valid"] for r in train_rows] == [32, 32, 32, 7] * 2 and all(r["grad_norm"] > 0 for r in train_rows)
    test_rows = [r for r in rows if r.get("split") == "test"]
    assert [(r["step"], r["samples"]) for r in test_rows] == [(4, 103), (8, 103)]
    model, _ = load_prior(out / "last.pt")
    batch = next(iter(TokenStream(md_tokens / "img", md_tokens / "text", batch_size=103)))
    with torch.no_grad():
        logits = model(batch["text"].long(), batch["image"].long())["image_logits"]
        ce = F.cross_entropy(logits.float().transpose(1, 2), batch["image"].long())
    assert test_rows[-1]["test_loss"] == pytest.approx(float(ce), rel=1e-5)
    short = train_prior(cfg(md_tokens, tmp_path / "n", steps=1, eval_image_tokens=str(md_tokens / "img"),
                            eval_text_tokens=str(md_tokens / "text"), eval_n=10))
    assert short["step"] == 1 and [(r["step"], r["samples"]) for r in metrics(tmp_path / "n") if r.get("split") == "test"] == [(1, 10)]
    with pytest.raises(T2IError, match="eval_image_tokens and eval_text_tokens go together"):
        cfg(md_tokens, tmp_path, steps=1, eval_image_tokens="x")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of even g1_tiny takes ~2 min on a 2-core CPU (inductor's "
                    "C++ build); the compiled path is checked on a GPU")
def test_compiled_training_on_gpu_matches_the_plain_model_closely(md_tokens, tmp_path):
    plain = train_prior(cfg(md_tokens, tmp_path / "plain", steps=3, num_workers=1, precision="fp32"))
    fast = train_prior(cfg(md_tokens, tmp_path / "compiled", steps=3, num_workers=1, precision="fp32", compile=True))
    assert plain["step"] == fast["step"] == 3
    a, b = metrics(tmp_path / "plain"), metrics(tmp_path / "compiled")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-3)
    ck = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in ck["state_dict"])  # checkpoints save the plain model
