"""``t2i sample --out DIR``: samples as an image shard set, reranking with a local CLIP, the grid, and
each wrong use (t2i_models/sample.py).

The chain is the smallest that makes the pixels depend on the prior's draws: MD-MNIST (16 train
samples; 12 test samples in shards of 5, 5, 2 as the prompt set), the mdmnist tokenizer (L = 12),
a random dVAE with 5 downsamples (V = 16, a 4×4 grid: 16 tokens a draw) and a G1 trained two steps.
At init that decoder gives the same image for every token grid (its 2-channel stages wash the
tokens out), so its BatchNorm running variances are set to 0.01 before it is saved: decoded
images of two draws then differ by ~50 gray levels per pixel on average.
"""
import json

import numpy as np
import pytest
import torch

from t2i_data.build import build_shard_set
from t2i_data.digest import canonical_json
from t2i_data.pngio import decode_image, encode_png
from t2i_data.runner import InProcessRunner
from t2i_data.tario import iter_samples
from t2i_models.cli import main
from t2i_models.sample import batch_seed, sample_key

N_TEST = 12


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    from t2i_data.mdmnist import MDMNISTConfig, build
    from t2i_data.text import load_pretrained
    from t2i_data.tokenize import TokenizeConfig, tokenize
    from t2i_models.builders import build_autoencoder
    from t2i_models.checkpoint import save_autoencoder
    from t2i_models.encode import EncodeConfig, encode
    from t2i_models.train_prior import PriorTrainConfig, train_prior

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine: one thread generates 16 tokens ~10x faster than two contending
    root = tmp_path_factory.mktemp("sample")
    build(MDMNISTConfig(seed=0, train=16, test=N_TEST, shard_size=5), root / "md", InProcessRunner())
    load_pretrained("mdmnist", None).save(root / "tk")
    tokenize(root / "tk", root / "md" / "train", root / "text", TokenizeConfig(length=12), InProcessRunner())
    torch.manual_seed(0)
    ae = build_autoencoder("dvae_tiny", image_size=128, hidden=64, vocab_size=16, downsamples=5)
    for m in ae.decoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.01)
    save_autoencoder(root / "ae.pt", ae)
    encode(root / "ae.pt", root / "md" / "train", root / "img", EncodeConfig(), InProcessRunner())
    train_prior(PriorTrainConfig(arch="g1_tiny", image_tokens=str(root / "img"), text_tokens=str(root / "text"), out=str(root / "p"),
                                 batch_size=4, num_workers=0, warmup=2, lr=3e-3, log_every=1, ckpt_every=2, steps=2))
    yield root
    torch.set_num_threads(threads)


def base(chain):
    return ["-q", "sample", "--prior", str(chain / "p" / "last.pt"), "--autoencoder", str(chain / "ae.pt"), "--tokenizer", str(chain / "tk")]


def prompt_set(chain):
    """[(key, captions)] of the test split, in shard order, through the project's reader."""
    out = []
    for shard in json.loads((chain / "md" / "test" / "manifest.json").read_text())["shards"]:
        out += [(s["__key__"], json.loads(s["json"])["captions"]) for s in iter_samples(chain / "md" / "test" / shard["name"])]
    return out


def read_set(folder):
    """(manifest, [[sample dict with 'meta' and 'pixels'] per shard])."""
    m = json.loads((folder / "manifest.json").read_text())
    shards = [[dict(s, meta=json.loads(s["json"]), pixels=decode_image(s["png"])) for s in iter_samples(folder / r["name"])] for r in m["shards"]]
    return m, shards


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def regenerate(chain, prompts: list[str], keys: list[str], draws: int, batch_size: int, seed: int = 0):
    """The draws of a prompt chunk as the module docstring says they are made, from the prior's own
    ``generate`` and ``decode_tokens``: rows (prompt, draw) prompt-major, batches of ``batch_size``,
    each batch's generator seeded by ``batch_seed(seed, its first key, its first draw)``."""
    from t2i_data.text import load_tokenizer
    from t2i_data.tokenize import encode_rows
    from t2i_models.checkpoint import load_autoencoder, load_prior, prompt_config
    from t2i_models.encode import decode_tokens

    prior, ck = load_prior(chain / "p" / "last.pt")
    ae, _ = load_autoencoder(chain / "ae.pt")
    rows, _ = encode_rows(load_tokenizer(chain / "tk"), prompts, prompt_config(ck), "int64")
    order = [(p, d) for p in range(len(prompts)) for d in range(draws)]
    out = []
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        gen = torch.Generator().manual_seed(batch_seed(seed, keys[batch[0][0]], batch[0][1]))
        with torch.no_grad():
            tokens = prior.generate(torch.from_numpy(rows[[p for p, _ in batch]]), generator=gen)
        out += list(decode_tokens(ae, tokens.view(-1, 4, 4)))
    return out


def test_shard_set_keys_captions_pixels_bytes_and_readers(chain, tmp_path, capsys):
    args = base(chain) + ["--prompts-from", str(chain / "md" / "test"), "--limit", "7", "-n", "2", "--batch-size", "3", "--seed", "5"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "wrote" in capsys.readouterr().out
    m, shards = read_set(tmp_path / "a")
    prompts = prompt_set(chain)[:7]
    # shard i holds the samples of prompt shard i (5 and 2 of the 7 keys), prompts and samples in order
    assert [len(s) for s in shards] == [10, 4] and [r["name"] for r in m["shards"]] == ["samples-test-000000.tar", "samples-test-000001.tar"]
    got = [s["__key__"] for shard in shards for s in shard]
    assert got == [f"{k}-s{j:05d}" for k, _ in prompts for j in range(2)] == [sample_key(k, j) for k, _ in prompts for j in range(2)]
    for s in (s for shard in shards for s in shard):
        key, j = s["meta"]["prompt_key"], s["meta"]["sample"]
        assert s["meta"] == {"captions": [dict(prompts)[key][0]], "prompt_key": key, "sample": j, "draw": j, "split": "test",
                             "clip_score": None, "clip_similarity": None}
        assert s["pixels"].shape == (128, 128, 3) and s["pixels"].dtype == np.uint8
    # pixels: the prior's own draws, batches of 3 within each shard, seeded as documented, decoded losslessly
    for shard, chunk in zip(shards, (prompts[:5], prompts[5:])):
        again = regenerate(chain, [c[0] for _, c in chunk], [k for k, _ in chunk], 2, 3, seed=5)
        assert all(np.array_equal(s["pixels"], px) for s, px in zip(shard, again))
        assert all(s["png"] == encode_png(px) for s, px in zip(shard, again))
    assert np.abs(shards[0][0]["pixels"].astype(int) - shards[0][1]["pixels"]).mean() > 10  # two draws of a prompt differ
    # the manifest: what made them
    assert (m["kind"], m["dataset"], m["split"], m["size"], m["seed"]) == ("images", "samples", "test", 128, 5)
    src = json.loads((chain / "md" / "test" / "manifest.json").read_text())
    assert m["sources"]["prompts"] == {"dataset": "mdmnist", "split": "test", "digest": src["digest"]}
    ck = torch.load(chain / "p" / "last.pt", weights_only=True)
    assert m["models"]["prior"]["fingerprint"] == ck["fingerprint"]
    assert m["models"]["autoencoder"]["fingerprint"] == ck["fingerprints"]["autoencoder"] == torch.load(chain / "ae.pt", weights_only=True)["fingerprint"]
    assert m["models"]["tokenizer"]["fingerprint"] == ck["fingerprints"]["tokenizer"]
    c = m["config"]
    assert (c["n"], c["rerank"], c["keep"], c["temperature"], c["top_k"], c["top_p"], c["batch_size"], c["device"]) == (2, None, None, 1.0, None, None, 3, "cpu")
    assert c["prompts"] == {"from": "shards", "caption": 0, "limit": 7, "read": 7, "used": 7, "repaired_utf8": 0,
                            "tokens": {"prompts": 7, "cut": 0, "with_unknown": 0, "unknown_tokens": 0, "empty": 0}}
    # the same command: the same bytes, in another folder and rerun in place (every shard reused)
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert files(tmp_path / "a") == files(tmp_path / "b")
    before = files(tmp_path / "a")
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "(2 reused)" in capsys.readouterr().out and files(tmp_path / "a") == before
    # the project's readers and commands take it
    assert main(["verify", str(tmp_path / "a")]) == 0
    assert main(["preview", str(tmp_path / "a"), "--out", str(tmp_path / "preview.png"), "-n", "4"]) == 0
    from t2i_data.manifest import data_files

    assert [p.rsplit("/", 1)[1] for p in data_files(tmp_path / "a")["test"]] == ["samples-test-000000.tar", "samples-test-000001.tar"]


def test_batch_size_one_makes_each_draw_a_function_of_seed_key_and_draw(chain, tmp_path):
    prompts = prompt_set(chain)
    args = base(chain) + ["--prompts-from", str(chain / "md" / "test"), "-n", "2", "--batch-size", "1"]
    assert main(args + ["--limit", "2", "--out", str(tmp_path / "two")]) == 0
    assert main(args + ["--limit", "3", "--out", str(tmp_path / "three")]) == 0
    _, (two,) = read_set(tmp_path / "two")
    _, (three,) = read_set(tmp_path / "three")
    assert [s["png"] for s in two] == [s["png"] for s in three[:4]]  # the first prompts' samples, whatever the set
    again = regenerate(chain, [c[0] for _, c in prompts[:3]], [k for k, _ in prompts[:3]], 2, 1)
    assert all(np.array_equal(s["pixels"], px) for s, px in zip(three, again))
    # any other batch size draws other numbers (documented): rows share one generator per batch
    assert main(args[:-1] + ["2", "--limit", "3", "--out", str(tmp_path / "b2")]) == 0
    _, (b2,) = read_set(tmp_path / "b2")
    assert [s["png"] for s in b2] != [s["png"] for s in three]


def test_rerank_keeps_the_top_k_by_clip_in_the_shard_set_and_the_grid(chain, tmp_path, realdata, capsys):
    from test_clip_score import _bpe, build_clip_folder
    from t2i_models.clip_score import load_clip

    clip = tmp_path / "clip"
    build_clip_folder(clip, _bpe(realdata))
    args = base(chain) + ["--prompts-from", str(chain / "md" / "test"), "--limit", "3", "--rerank", "4", "--keep", "2", "--clip", str(clip),
                          "--batch-size", "1"]
    assert main(args + ["--out", str(tmp_path / "r")]) == 0
    m, (shard,) = read_set(tmp_path / "r")
    prompts = prompt_set(chain)[:3]
    scorer = load_clip(clip)
    all_sims = []
    for p, (key, caps) in enumerate(prompts):
        draws = np.stack(regenerate(chain, [caps[0]], [key], 4, 1))
        sims = scorer.similarity(draws, [caps[0]] * 4)
        all_sims.append(sims)
        best = np.argsort(-sims, kind="stable")[:2]
        assert sims[best[0]] > sims[best[1]] > min(sims)  # a real choice, no tie
        kept = shard[2 * p : 2 * p + 2]
        assert [s["__key__"] for s in kept] == [sample_key(key, 0), sample_key(key, 1)]
        assert [s["meta"]["draw"] for s in kept] == best.tolist()
        assert [s["meta"]["clip_similarity"] for s in kept] == [float(sims[i]) for i in best]
        assert [s["meta"]["clip_score"] for s in kept] == [max(float(sims[i]), 0.0) for i in best]
        assert all(np.array_equal(s["pixels"], draws[i]) for s, i in zip(kept, best))
    every = np.concatenate(all_sims)
    r = m["rerank"]
    assert r["draws"]["n"] == 12 and r["kept"]["n"] == 6
    assert r["draws"]["similarity_mean"] == pytest.approx(every.mean(), abs=1e-9)
    assert r["draws"]["score_mean"] == pytest.approx(np.maximum(every, 0).mean(), abs=1e-9)
    assert sum(c for _, c in r["draws"]["histogram_5pt"]) == 12
    assert r["kept"]["similarity_mean"] > r["draws"]["similarity_mean"]
    assert m["stats"]["clip_texts_cut"] == 0  # MD-MNIST descriptions: 12 words, far below 77 CLIP tokens
    assert (m["config"]["rerank"], m["config"]["keep"], m["config"]["n"]) == (4, 2, 2)
    assert m["models"]["clip"]["fingerprint"] == scorer.fingerprint and m["models"]["clip"]["weights"] == ["model.safetensors"]
    # the grid draws the same way: its rows are the kept images
    grid = base(chain) + ["--prompt", prompts[0][1][0], "--rerank", "4", "--keep", "2", "--clip", str(clip), "--batch-size", "1"]
    assert main(grid + ["--out", str(tmp_path / "g.png")]) == 0
    assert "1 prompts x 2 samples, best of 4 by CLIP" in capsys.readouterr().out
    from PIL import Image

    with Image.open(tmp_path / "g.png") as im:
        assert im.size[0] == 2 * (128 + 4) + 4


def test_keys_without_the_caption_are_quarantined_counted_and_shown(chain, tmp_path, capsys):
    """A set whose keys hold 2, 1, 2, 0, 2 captions: --caption 1 --limit 4 keeps keys 0 and 2."""
    counts = [2, 1, 2, 0, 2]
    img = np.zeros((8, 8, 3), np.uint8)

    def produce(i):
        for k, n in enumerate(counts):
            yield {"__key__": f"toy-{k:03d}", "png": encode_png(img), "json": canonical_json({"captions": [f"{d} 20 r up" for d in range(n)]})}

    build_shard_set(produce, tmp_path / "toy", "toy-test", [5], {"kind": "images", "dataset": "toy", "split": "test", "regime": None, "size": 8,
                                                                  "config": {}, "seed": 0, "sources": {}, "aligned_to": None}, InProcessRunner())
    args = base(chain) + ["--prompts-from", str(tmp_path / "toy"), "--caption", "1", "-n", "1"]
    assert main(args + ["--limit", "4", "--out", str(tmp_path / "s")]) == 0
    assert "2 of the 4 keys read have no caption 1: quarantined" in capsys.readouterr().out
    m, (shard,) = read_set(tmp_path / "s")
    assert [s["__key__"] for s in shard] == ["toy-000-s00000", "toy-002-s00000"] and [s["meta"]["captions"] for s in shard] == [["1 20 r up"]] * 2
    assert m["quarantined"] == [{"key": "toy-001", "reason": "no-caption: it has 1 caption(s), --caption 1 asks for the 2-th"},
                                {"key": "toy-003", "reason": "no-caption: it has 0 caption(s), --caption 1 asks for the 2-th"}]
    assert m["totals"]["quarantined"] == 2 and m["config"]["prompts"]["read"] == 4 and m["config"]["prompts"]["used"] == 2
    assert main(args[:-4] + ["--caption", "2", "--out", str(tmp_path / "s2")]) == 2
    err = capsys.readouterr().err
    assert "--caption 2: none of the 5 keys read from" in err and "the most any has is 2); give --caption below 2" in err


def test_grid_with_a_prompt_list_still_works(chain, tmp_path, capsys):
    assert main(base(chain) + ["--prompt", "4 30 g down 8 40 b up 6 40 b middle", "--prompt", "a red cat", "-n", "3",
                               "--out", str(tmp_path / "grid.png")]) == 0
    assert "2 prompts x 3 samples" in capsys.readouterr().out
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] == 3 * (128 + 4) + 4 and im.size[1] > 2 * 128
    # a list as a shard set: keys prompt-000000, ..., split "prompts"
    assert main(base(chain) + ["--prompt", "4 30 g down", "--prompt", "a red cat", "-n", "1", "--out", str(tmp_path / "list")]) == 0
    m, (shard,) = read_set(tmp_path / "list")
    assert [s["__key__"] for s in shard] == ["prompt-000000-s00000", "prompt-000001-s00000"] and m["split"] == "prompts"
    assert m["config"]["prompts"]["tokens"] == {"prompts": 2, "cut": 0, "with_unknown": 1, "unknown_tokens": 3, "empty": 0}


def wrong_uses(chain, tmp_path):
    test = str(chain / "md" / "test")
    (tmp_path / "busy").mkdir(exist_ok=True)
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    pf = ["--prompts-from", test]
    return [
        (["--prompt", "x", "--keep", "2", "--out", f"{tmp_path}/o"], "--keep K applies to --rerank N (keep the K best of N draws)"),
        (["--prompt", "x", "--rerank", "2", "--keep", "3", "--clip", str(tmp_path), "--out", f"{tmp_path}/o"],
         "3 samples kept per prompt (--keep K, or -n) is more than the --rerank 2 draws: reranking keeps K of N draws; give K <= N"),
        (["--prompt", "x", "--rerank", "3", "--out", f"{tmp_path}/o"], "--rerank needs --clip DIR: a local CLIP folder"),
        (["--prompt", "x", "--rerank", "2", "--clip", str(tmp_path), "--out", f"{tmp_path}/o"],
         "4 samples kept per prompt (--keep K, or -n) is more than the --rerank 2 draws"),  # K = -n's 4 without --keep
        (["--prompt", "x", "--clip", str(tmp_path), "--out", f"{tmp_path}/o"], "--clip is used only by --rerank N"),
        (["--prompt", "x", "-n", "3", "--rerank", "4", "--keep", "2", "--clip", str(tmp_path), "--out", f"{tmp_path}/o"],
         "-n 3 and --keep 2: both set the samples kept per prompt; give one"),
        ([*pf, "--prompt", "x", "--out", f"{tmp_path}/o"], "--prompts-from takes the prompts from a shard set; give it or --prompt / --prompts, not both"),
        ([*pf, "--caption", "-1", "--out", f"{tmp_path}/o"], "--caption must be 0 or more"),
        ([*pf, "--caption", "1", "--out", f"{tmp_path}/o"], "--caption 1: none of the 12 keys read from"),
        (["--prompt", "x", "--limit", "3", "--out", f"{tmp_path}/o"], "--caption and --limit apply to --prompts-from SHARDS"),
        ([*pf, "--out", f"{tmp_path}/busy"], "busy: holds notes.txt, which is not part of a t2i sample set of these prompts (samples-test-*.tar); "
                                              "give a new or empty folder"),
        ([*pf, "--out", test], "that is the input set's own folder"),
        ([*pf, "--out", str(chain / "md")], "md: holds LICENSE.md, README.md, test and 1 more, which is not part of a t2i sample set"),
        (["--prompt", "x", "--out", f"{tmp_path}/grid.jpg"], "the grid is written as PNG; give a .png file for a grid, or a folder"),
        (["--prompt", "x", "--batch-size", "0", "--out", f"{tmp_path}/o"], "--batch-size must be at least 1, got 0"),
        (["--out", f"{tmp_path}/o"], "no prompts given: --prompt TEXT, --prompts FILE (one per line) or --prompts-from SHARDS"),
        (["--prompt", "x", "--rerank", "2", "--keep", "1", "--clip", f"{tmp_path}/no-clip", "--out", f"{tmp_path}/o"],
         "--clip " + f"{tmp_path}/no-clip: no such folder; it must hold config.json"),
        (["--prompts-from", str(chain / "md"), "--out", f"{tmp_path}/o"],
         f"--prompts-from {chain / 'md'}: 2 splits (test, train); give one split's folder, e.g. {chain / 'md' / 'test'}"),
        (["--prompts-from", str(chain / "text"), "--out", f"{tmp_path}/o"],
         f"--prompts-from {chain / 'text'}: a text_tokens shard set; prompts come from an image shard set's captions"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_each_wrong_use_stops_with_one_line_and_exit_2(chain, tmp_path, capsys, case):
    table = wrong_uses(chain, tmp_path)
    assert len(table) == 19
    argv, fragment = table[case]
    assert main(base(chain) + argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("t2i: error: ") and fragment in err[0], err
    assert not (tmp_path / "o").exists()  # nothing written before the refusal


def test_prompt_keys_that_cannot_make_increasing_sample_keys_are_refused():
    from t2i_data.errors import T2IError
    from t2i_models.sample import PromptSet, check_keys

    def ps(keys):
        return PromptSet(keys, ["x"] * len(keys), "test", [(0, len(keys))], [[]], {}, len(keys), {})

    check_keys(ps(["a-1", "a-2"]), 3)
    with pytest.raises(T2IError, match="prompt keys 'a' then 'a-b': their sample keys \\('a-s00000', 'a-b-s00000'\\) do not increase"):
        check_keys(ps(["a", "a-b"]), 1)
    with pytest.raises(T2IError, match="make tar member names over 100 bytes; shorten the prompt set's keys"):
        check_keys(ps(["k" * 90]), 1)
