import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_models.clip_eval import ATTRIBUTES, ctrs_counts, random_descriptions, variant, variant_set
from t2i_models.eval_mdmnist import EvalConfig, evaluate, sign_test_p


def attribute_of(position: int) -> set:
    return set(ATTRIBUTES[position % 4])


def test_random_descriptions_are_uniform_per_attribute_and_a_function_of_seed_and_index():
    d = random_descriptions(3, np.arange(4000))
    for p in range(12):
        values, counts = np.unique(d[:, p], return_counts=True)
        assert set(values.tolist()) == attribute_of(p)  # every value of the attribute, nothing else
        expected = 4000 / len(values)
        assert (np.abs(counts - expected) < 5 * math.sqrt(expected)).all()
    assert (random_descriptions(3, [17, 2]) == d[[17, 2]]).all()  # index i's description, whatever else is drawn
    assert (random_descriptions(4, [17]) != d[17]).any()


def test_variants_change_exactly_m_symbols_each_to_another_value_of_its_attribute():
    idx = np.arange(600)
    base = random_descriptions(0, idx)
    seen_positions = np.zeros(12, dtype=np.int64)
    for m in range(1, 13):
        v = variant(base, 5, "ctrs", idx, m)
        changed = v != base
        assert (changed.sum(axis=1) == m).all()  # exactly m, never fewer (the thesis drew positions with replacement)
        for p in range(12):
            assert set(v[:, p].tolist()) <= attribute_of(p)
        if m == 1:
            seen_positions += changed.sum(axis=0)
        assert (variant(base[::-1], 5, "ctrs", idx[::-1], m) == v[::-1]).all()  # a pure function of (seed, index, m)
    assert (seen_positions > 600 / 12 / 2).all()  # the single changed position is spread over all 12
    sets = variant_set(base, 5, "ctrs", idx)
    assert sets.shape == (600, 13, 12) and (sets[:, 0] == base).all()
    assert ((sets != base[:, None]).sum(axis=2) == np.arange(13)).all()
    new_values = {p: set(sets[:, 12, p].tolist()) for p in range(12)}  # m = 12: every symbol changed
    assert all(new_values[p] == attribute_of(p) for p in range(12))
    with pytest.raises(T2IError, match="not an MD-MNIST description"):
        variant(np.array([[4, 11, 15, 19, 8, 12, 16, 17, 6, 12, 16, 3]]), 0, "x", [0], 1)


def test_sign_test_is_the_exact_two_sided_binomial():
    assert sign_test_p(0, 10) == pytest.approx(2 / 1024) and sign_test_p(10, 0) == sign_test_p(0, 10)
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0 and sign_test_p(3, 0) == 0.25
    n = 25
    for k in range(n + 1):  # against the definition: the mass of outcomes no more likely than k
        pk = math.comb(n, k) / 2**n
        brute = sum(math.comb(n, i) / 2**n for i in range(n + 1) if math.comb(n, i) / 2**n <= pk * (1 + 1e-12))
        assert sign_test_p(k, n - k) == pytest.approx(min(1.0, brute), rel=1e-12)
    assert 0.044 < sign_test_p(5100, 4900) < 0.048  # z = 2: about 0.0455
    assert 0 <= sign_test_p(0, 5000) < 1e-300


def test_ctrs_counts_ranks_and_ties():
    s = torch.tensor([[0.9] + [0.1] * 12,  # the true description wins
                      [0.5, 0.1, 0.1, 0.8] + [0.2] * 9,  # the variant with 3 changes wins; true ranks behind it only
                      [0.5, 0.5] + [0.1] * 11,  # a tie with m = 1 counts against the true description
                      [0.3] * 13])  # a CLIP that scores all alike lands in column 12
    c = ctrs_counts(s)
    assert c["picked"] == [1, 1, 0, 1] + [0] * 8 + [1]
    assert c["true_rank"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] and c["ties"] == 2


def test_cics_counts_wins_per_description_and_ctrs_ties_on_stub_models():
    """Stub priors draw one token from the prompt's first digit value v (A: v, B: 9 − v), a stub
    autoencoder paints it as brightness, a stub CLIP prefers brighter images and sees no text: A
    wins exactly the descriptions with v >= 5, and every CTRS score ties (column 12)."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from t2i_models.eval_mdmnist import cics_ctrs

    class Prior:
        def __init__(self, flip):
            self.flip = flip

        def generate(self, text, temperature, top_k, top_p, generator):
            v = text[:, 0] % 10  # ids 0-9 are the digit values
            return (9 - v if self.flip else v).view(-1, 1)

    ae = SimpleNamespace(cfg=SimpleNamespace(grid=1), decode=lambda t: t.float().view(-1, 1, 1, 1).expand(-1, 3, 8, 8) / 10)
    clip = SimpleNamespace(image_features=lambda x: F.normalize(torch.stack([x.mean((1, 2, 3)), torch.full((len(x),), 0.5)], 1), dim=1),
                           text_features=lambda t: torch.tensor([[1.0, 0.0]]).expand(len(t), 2))
    ck = {"tokens": {"text_len": 12}, "text_config": {}}
    cfg = EvalConfig(priors=("a", "b"), clip="c", autoencoder="ae", image_tokens="i", text_tokens="t", out="o", n=250, batch_size=64)
    cics, ctrs = cics_ctrs(cfg, [(Prior(False), ck), (Prior(True), ck)], clip, ae, torch.device("cpu"))
    a = int((random_descriptions(0, np.arange(250))[:, 0] >= 5).sum())
    assert (cics["a_wins"], cics["b_wins"], cics["ties"]) == (a, 250 - a, 0) and 80 < a < 170
    assert cics["p_value"] == sign_test_p(a, 250 - a) and cics["per_100"]["a_mean"] == pytest.approx(100 * a / 250)
    assert cics["per_100"]["complete_batches"] == 2 and cics["per_100"]["a_std"] is not None
    for s in ("a", "b"):
        assert ctrs[s]["picked"] == [0] * 12 + [250] and ctrs[s]["true_rank"] == [0] * 12 + [250] and ctrs[s]["ties"] == 250


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A tiny trained stack: MD-MNIST (48 train, 24 test) → mdmnist text tokens and image tokens
    from a tiny dVAE with an 8×8 grid (64 tokens per image: sampling md_tokens' 32×32 grids takes
    seconds per image here), two priors and a CLIP trained a few steps each."""
    from t2i_data.mdmnist import MDMNISTConfig, build
    from t2i_data.runner import InProcessRunner
    from t2i_data.text import load_pretrained
    from t2i_data.tokenize import TokenizeConfig, tokenize
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    root = tmp_path_factory.mktemp("evalstack")
    build(MDMNISTConfig(seed=0, train=48, test=24, shard_size=16), root / "md", InProcessRunner())
    load_pretrained("mdmnist", None).save(root / "tk")
    tokenize(root / "tk", root / "md", root / "text", TokenizeConfig(length=12), InProcessRunner())
    torch.manual_seed(0)
    save_autoencoder(root / "ae.pt", build_autoencoder("dvae_tiny", image_size=128, hidden=16, downsamples=4, vocab_size=16))
    encode(root / "ae.pt", root / "md", root / "img", EncodeConfig(), InProcessRunner())
    for arch in ("g1_tiny", "g2_tiny"):
        train_prior(PriorTrainConfig(arch=arch, image_tokens=str(root / "img" / "train"), text_tokens=str(root / "text" / "train"),
                                     out=str(root / arch), steps=3, batch_size=8, warmup=1, num_workers=0))
    assert main(["-q", "train", "clip", "arch=clip_tiny", f"image_tokens={root / 'img' / 'train'}", f"text_tokens={root / 'text' / 'train'}",
                 f"autoencoder={root / 'ae.pt'}", f"out={root / 'clip'}", "steps=3", "batch_size=8", "num_workers=0"]) == 0
    return root


def eval_args(root, out, *priors, extra=()):
    return (["-q", "eval", "mdmnist", "--priors", *(str(root / p / "last.pt") for p in priors), "--clip", str(root / "clip" / "last.pt"),
             "--autoencoder", str(root / "ae.pt"), "--image-tokens", str(root / "img" / "test"), "--text-tokens", str(root / "text" / "test"),
             "--out", str(out), "--n", "10", "--batch-size", "4", "--grid-prompts", "2", "--grid-samples", "2"] + list(extra))


def test_eval_runs_end_to_end_and_is_deterministic(stack, tmp_path, capsys):
    assert main(eval_args(stack, tmp_path / "r1", "g1_tiny", "g2_tiny")) == 0
    printed = capsys.readouterr().out
    assert "CICS over 10 descriptions" in printed and "report.json" in printed
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    c = report["cics"]
    assert c["a_wins"] + c["b_wins"] + c["ties"] == 10 and c["p_value"] == sign_test_p(c["a_wins"], c["b_wins"])
    assert c["per_100"]["a_mean"] == 10 * c["a_wins"] and c["per_100"]["complete_batches"] == 0
    for s in ("a", "b"):
        ct = report["ctrs"][s]
        assert len(ct["picked"]) == len(ct["true_rank"]) == 13 and sum(ct["picked"]) == sum(ct["true_rank"]) == 10
        loss = report["loss"][s]
        q = list(loss["quantiles"].values())
        assert loss["n"] == 24 and q == sorted(q) and q[0] <= loss["mean"] <= q[-1] and sum(report["loss"]["histogram"][s]) == 24
        assert 0 < loss["mean"] < 2 * math.log(16)  # nats per token, V = 16: near log V for priors trained 3 steps
    acc = report["clip"]["test"]
    assert acc["samples"] == 24 and sum(acc["picked"]) == 24 and report["eval_set"]["split"] == "test"
    assert len(report["warnings"]) == (acc["accuracy"] <= acc["chance"]) and printed.count("WARNING: CLIP picks") == len(report["warnings"])
    assert report["priors"]["a"]["arch"] == "g1_tiny" and report["priors"]["b"]["kind"] == "g2"
    sizes = {}
    for name in ("ctrs.png", "ctrs_rank.png", "loss_hist.png", "samples.png"):
        with Image.open(tmp_path / "r1" / name) as im:
            sizes[name] = im.size
            px = np.asarray(im.convert("RGB"))
        assert (px < 100).any() and (px == 255).all(axis=2).mean() > 0.3  # dark marks on a white page
    assert sizes["ctrs.png"] == (900, 480)
    assert sizes["samples.png"][0] == 4 * (128 + 4) + 4 + 16 and sizes["samples.png"][1] > 2 * 128  # 2 + 2 samples, 2 prompt rows
    # the same config and seed: the same report, byte for byte
    again = evaluate(EvalConfig(priors=(str(stack / "g1_tiny" / "last.pt"), str(stack / "g2_tiny" / "last.pt")), clip=str(stack / "clip" / "last.pt"),
                                autoencoder=str(stack / "ae.pt"), image_tokens=str(stack / "img" / "test"), text_tokens=str(stack / "text" / "test"),
                                out=str(tmp_path / "r2"), n=10, batch_size=4, grid_prompts=2, grid_samples=2))
    assert (tmp_path / "r2" / "report.json").read_bytes() == (tmp_path / "r1" / "report.json").read_bytes() and again == report


def test_eval_warns_that_cics_and_ctrs_are_noise_when_clip_is_at_chance(stack, tmp_path, capsys, monkeypatch):
    import t2i_models.eval_mdmnist as ev

    real = ev.split_pass

    def at_chance(*args, **kwargs):
        acc, losses, eval_set = real(*args, **kwargs)
        return dict(acc, accuracy=acc["chance"]), losses, eval_set

    monkeypatch.setattr(ev, "split_pass", at_chance)
    assert main(eval_args(stack, tmp_path, "g1_tiny", "g2_tiny", extra=["--grid-prompts", "1", "--grid-samples", "1"])) == 0
    printed = capsys.readouterr().out
    assert "WARNING: CLIP picks the true description for 7.7% of 24 test images, at or below chance (7.7%): CICS and CTRS below are noise" in printed
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == [printed.split("WARNING: ")[1].split("\n")[0]]


def test_one_prior_against_itself_greedy_ties_everywhere(stack, tmp_path):
    assert main(eval_args(stack, tmp_path, "g2_tiny", "g2_tiny", extra=["--temperature", "0", "--grid-prompts", "1", "--grid-samples", "1"])) == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert (r["cics"]["a_wins"], r["cics"]["b_wins"], r["cics"]["ties"], r["cics"]["p_value"]) == (0, 0, 10, 1.0)
    assert r["ctrs"]["a"] == r["ctrs"]["b"] and r["loss"]["a"] == r["loss"]["b"]


def test_eval_refuses_mismatched_checkpoints(stack, tmp_path, capsys):
    clip = stack / "clip" / "last.pt"
    args = eval_args(stack, tmp_path, "g1_tiny", "g2_tiny")
    assert main(args[:4] + [str(clip)] + args[5:]) == 2  # a CLIP given as prior A
    assert "is a CLIP checkpoint; --priors takes two prior checkpoints" in capsys.readouterr().err
    i = args.index("--clip")
    assert main(args[: i + 1] + [str(stack / "g1_tiny" / "last.pt")] + args[i + 2 :]) == 2
    assert "not a CLIP" in capsys.readouterr().err
    ck = torch.load(stack / "g2_tiny" / "last.pt", weights_only=True)
    ck["fingerprints"]["autoencoder"] = "f" * 64
    torch.save(ck, tmp_path / "other_ae.pt")
    assert main(args[:5] + [str(tmp_path / "other_ae.pt")] + args[6:]) == 2
    assert "prior B" in (err := capsys.readouterr().err) and "trained on image tokens of autoencoder ffffffffffffffff" in err
    ck = torch.load(clip, weights_only=True)
    ck["fingerprints"]["autoencoder"] = "e" * 64
    torch.save(ck, tmp_path / "clip_other.pt")
    assert main(args[: i + 1] + [str(tmp_path / "clip_other.pt")] + args[i + 2 :]) == 2
    assert "the CLIP" in (err := capsys.readouterr().err) and "reconstructions by autoencoder eeeeeeeeeeeeeeee" in err
    assert main(["-q", "eval", "mdmnist", "--priors", "a", "b"]) == 2
    assert "clip, autoencoder, image_tokens, text_tokens, out needed" in capsys.readouterr().err


def test_shipped_eval_table():
    from pathlib import Path

    from t2i_data.config import resolve

    cfg = resolve(EvalConfig, Path(__file__).resolve().parents[1] / "pipelines" / "mdmnist.toml", "eval_mdmnist", {"priors": ("a", "b")})
    assert (cfg.n, cfg.batch_size, cfg.clip) == (1000, 100, "runs/mdmnist-clip/last.pt")
