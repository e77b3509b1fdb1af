"""CLIP score from a local CLIP folder (t2i_models/clip_score.py) against torchmetrics' CLIPScore,
an independent computation, and OpenAI's tokenizer.

The folder is a random-init tiny ``CLIPModel`` saved with ``save_pretrained`` beside real CLIP
tokenizer files: vocab.json and merges.txt built from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``
exactly as CLIP's ``SimpleTokenizer`` builds its vocabulary (lines 2–48,895 of the file are the
merges; the vocabulary is the 256 byte-unicode characters, the same with ``</w>``, the merges
joined, then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 entries), and a
``CLIPImageProcessor`` config (OpenAI's mean and std, bicubic, at the tiny model's 32 px).
"""
import gzip
import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from reference_tokenizers import SENTENCES, CLIPReference, bytes_to_unicode
from t2i_data.errors import T2IError
from t2i_models.clip_score import load_clip, set_score

SOT, EOT = 49406, 49407
TEXTS = ["a photo of a cat", "a red bird", "two dogs", "this bird has a white belly", "a small red car", "a green field", "",
         "the year 2024"]


def _bpe(realdata):
    path = realdata / "vocab" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip(f"no CLIP BPE file at {path}")
    return path


def build_clip_folder(folder, bpe_gz, seed: int = 4) -> None:
    """The tiny CLIP folder of the module docstring. Seed 4 gives the TEXTS pairs below both
    positive and negative cosines with a positive mean (asserted where it matters)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True)
    merges = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]  # SimpleTokenizer's slice
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(merges) == 48_894 and len(vocab) == 49_408
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    CLIPTokenizer.from_pretrained(folder, local_files_only=True).save_pretrained(folder)  # + tokenizer.json, tokenizer_config.json
    cfg = CLIPConfig(text_config=dict(vocab_size=49_408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=77, bos_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2),
                     projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def clip_dir(realdata, tmp_path_factory):
    # "openai" in the name: torchmetrics 1.9.0 loads a string model_name_or_path only when it contains it
    folder = tmp_path_factory.mktemp("clip") / "openai-clip-tiny"
    build_clip_folder(folder, _bpe(realdata))
    return folder


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return load_clip(clip_dir)


def images(n: int = 8, seed: int = 0) -> np.ndarray:
    """(n, 40, 48, 3) uint8: not square and not the model's 32 px, so resize and crop both act."""
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)


def torchmetrics_clipscore(folder):
    """torchmetrics' CLIPScore on ``folder``, loaded the way its string path does
    (``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` of the folder).

    Two local workarounds, neither touching the computation: torchmetrics 1.9.0 imports
    torch_fidelity when it is installed, which imports torchvision, which fails to import beside
    torch 2.13 here, so torchmetrics is imported with torch_fidelity reported absent (it is used
    only by the image metrics); and 1.9.0 calls ``.norm`` on what ``get_*_features`` return, a
    model output in transformers 5 (torchmetrics issue #3407, fixed after 1.9.0 by PR #3408
    exactly so: take ``pooler_output``), so the model is passed through the documented callable
    form with its features unwrapped."""
    try:
        from torchmetrics.multimodal.clip_score import CLIPScore
    except ImportError:
        import lightning_utilities.core.imports as lui

        real = lui.RequirementCache

        class NoFidelity(real):
            def __bool__(self):
                return False if str(self.requirement).startswith(("torch_fidelity", "torchvision")) else super().__bool__()

        for name in [m for m in __import__("sys").modules if m == "torchmetrics" or m.startswith("torchmetrics.")]:
            del __import__("sys").modules[name]
        lui.RequirementCache = NoFidelity
        try:
            from torchmetrics.multimodal.clip_score import CLIPScore
        finally:
            lui.RequirementCache = real
    from transformers import CLIPModel, CLIPProcessor

    class Unwrapped(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *a, **k):
            out = self.model.get_image_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

        def get_text_features(self, *a, **k):
            out = self.model.get_text_features(*a, **k)
            return out if isinstance(out, torch.Tensor) else out.pooler_output

    def load():
        return Unwrapped(CLIPModel.from_pretrained(str(folder)).eval()), CLIPProcessor.from_pretrained(str(folder))

    return CLIPScore(model_name_or_path=load)


def test_scores_equal_torchmetrics_per_image_and_over_the_set(scorer, clip_dir):
    imgs = images()
    sim = scorer.similarity(imgs, TEXTS)
    score = scorer.score(imgs, TEXTS)
    assert sim.dtype == score.dtype == np.float64 and sim.shape == (8,)
    assert (sim < 0).sum() >= 2 and (sim > 0).sum() >= 2 and sim.mean() > 0  # the floor matters per image, not for the mean
    np.testing.assert_array_equal(score, np.maximum(sim, 0))
    metric = torchmetrics_clipscore(clip_dir)
    as_tensors = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8, as torchmetrics takes images
    per_image = []
    for i in range(len(imgs)):
        metric.reset()
        metric.update(as_tensors[i], TEXTS[i])
        per_image.append(float(metric.compute()))
    np.testing.assert_allclose(score, per_image, atol=1e-4, rtol=0)
    metric.reset()
    metric.update(as_tensors, TEXTS)
    whole = float(metric.compute())
    assert whole == pytest.approx(set_score(sim), abs=1e-4)
    assert abs(whole - score.mean()) > 1  # torchmetrics floors the mean, not each image
    # torchmetrics' own per-pair values, before any floor
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    raw, n = _clip_score_update(list(as_tensors), TEXTS, metric.model, metric.processor)
    assert n == 8
    np.testing.assert_allclose(sim, raw.detach().double().numpy(), atol=1e-4, rtol=0)


def test_scores_equal_an_independent_computation(scorer, clip_dir, realdata):
    """Pixels prepared with PIL by hand (bicubic shorter side to 32, centre crop, OpenAI's mean
    and std), ids from OpenAI's SimpleTokenizer logic, the towers and projections called directly."""
    from PIL import Image
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    imgs = images()
    mean, std = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
    pix = []
    for im in imgs:
        small = np.asarray(Image.fromarray(im).resize((38, 32), Image.Resampling.BICUBIC))  # 48 x 40 -> 38 x 32 (int(48 * 32 / 40))
        pix.append(((small[:, 3:35] / 255.0 - mean) / std).transpose(2, 0, 1))  # centre 32 of 38: offset (38 - 32) // 2
    ref = CLIPReference(_bpe(realdata))
    ids = [[SOT] + ref.encode(t) + [EOT] for t in TEXTS]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [EOT] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        e_i = model.visual_projection(model.vision_model(pixel_values=torch.tensor(np.stack(pix), dtype=torch.float32)).pooler_output)
        e_c = model.text_projection(model.text_model(input_ids=input_ids, attention_mask=mask).pooler_output)
    cos = torch.nn.functional.cosine_similarity(e_i.double(), e_c.double(), dim=-1).numpy()
    np.testing.assert_allclose(scorer.similarity(imgs, TEXTS), 100 * cos, atol=1e-4, rtol=0)
    np.testing.assert_allclose(scorer.score(imgs, TEXTS, batch_size=3), np.maximum(100 * cos, 0), atol=1e-4, rtol=0)


def test_token_ids_are_openai_clips(scorer, realdata):
    ref = CLIPReference(_bpe(realdata))
    assert scorer.tokenizer("a photo of a cat")["input_ids"] == [SOT, 320, 1125, 539, 320, 2368, EOT]
    # a word BPE splits into several merges: the ids of the published vocabulary, piece by piece
    word = scorer.tokenizer("pneumonoultramicroscopicsilicovolcanoconiosis")["input_ids"]
    assert len(word) > 4 and word == [SOT] + ref.encode("pneumonoultramicroscopicsilicovolcanoconiosis") + [EOT]
    assert [scorer.tokenizer(s)["input_ids"] for s in SENTENCES] == [[SOT] + ref.encode(s) + [EOT] for s in SENTENCES]


def test_long_texts_are_cut_to_the_context_with_the_end_token_kept_and_counted(scorer, caplog):
    fits, over = " ".join(["cat"] * 75), " ".join(["cat"] * 90)  # 77 and 92 tokens with start and end
    assert len(scorer.tokenizer(fits)["input_ids"]) == 77 and len(scorer.tokenizer(over)["input_ids"]) == 92
    imgs = images(3)
    before = scorer.truncated
    with caplog.at_level(logging.WARNING, logger="t2i_models.clip_score"):
        sim = scorer.similarity(imgs, [fits, over, "a cat"])
    assert scorer.last_truncated == 1 and scorer.truncated == before + 1
    assert "1 of 3 distinct texts are longer than the CLIP's 77-token context (longest 92 tokens)" in caplog.text
    # cut to 76 tokens + the end token: exactly the 75-word text's ids, so exactly its score
    assert sim[1] == pytest.approx(float(scorer.similarity(imgs[1:2], [fits])[0]), abs=1e-5)
    assert scorer.last_truncated == 0
    again = scorer.similarity(imgs, [over, over, "a cat"])  # one text encoded once, counted per pair
    assert scorer.last_truncated == 2 and scorer.truncated == before + 3
    assert again[1] == pytest.approx(sim[1], abs=1e-5)


def test_fingerprint_info_and_pytorch_bin_weights(scorer, clip_dir, tmp_path):
    assert scorer.fingerprint == hashlib.sha256((clip_dir / "model.safetensors").read_bytes()).hexdigest()
    assert scorer.info["weights"] == ["model.safetensors"] and scorer.info["image_size"] == 32 and scorer.info["text_length"] == 77
    assert scorer.info["architecture"].startswith("CLIPModel: ViT patch 8, width 32, 2 layers; text width 32, 2 layers, vocabulary 49408")
    # the same weights as pytorch_model.bin (the other published form): same scores, that file's sha256
    from safetensors.torch import load_file

    other = tmp_path / "bin"
    shutil.copytree(clip_dir, other)
    (other / "model.safetensors").unlink()
    torch.save(load_file(clip_dir / "model.safetensors"), other / "pytorch_model.bin")
    s2 = load_clip(other)
    assert s2.fingerprint == hashlib.sha256((other / "pytorch_model.bin").read_bytes()).hexdigest() and s2.info["weights"] == ["pytorch_model.bin"]
    np.testing.assert_array_equal(s2.similarity(images(4), TEXTS[:4]), scorer.similarity(images(4), TEXTS[:4]))


def test_each_wrong_folder_stops_with_one_message(clip_dir, tmp_path):
    holds = "nothing is downloaded"
    with pytest.raises(T2IError, match=f"no such folder; it must hold config.json .*{holds}"):
        load_clip(tmp_path / "nowhere")
    (tmp_path / "clip.pt").write_bytes(b"a t2i evaluation CLIP checkpoint")
    with pytest.raises(T2IError, match="clip.pt: a file, not a folder; --clip takes a transformers CLIP folder"):
        load_clip(tmp_path / "clip.pt")

    def copy(name, drop=()):
        d = tmp_path / name
        shutil.copytree(clip_dir, d)
        for f in drop:
            (d / f).unlink()
        return d

    with pytest.raises(T2IError, match=f"no config.json; the folder must hold .*{holds}"):
        load_clip(copy("noconfig", ["config.json"]))
    bert = copy("bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(T2IError, match="config.json describes model_type 'bert', not a CLIP"):
        load_clip(bert)
    with pytest.raises(T2IError, match=f"no weights \\(model.safetensors or pytorch_model.bin\\); the folder must hold .*{holds}"):
        load_clip(copy("noweights", ["model.safetensors"]))
    with pytest.raises(T2IError, match="no tokenizer files \\(vocab.json \\+ merges.txt, or tokenizer.json\\)"):
        load_clip(copy("notok", ["vocab.json", "merges.txt", "tokenizer.json"]))
    with pytest.raises(T2IError, match="no preprocessor_config.json"):
        load_clip(copy("noproc", ["preprocessor_config.json"]))
    # weights of another CLIP (projection 8, not 16) under this config: refused, never random-filled
    from transformers import CLIPConfig, CLIPModel

    wrong = copy("wrong")
    cfg = CLIPConfig.from_pretrained(clip_dir)
    cfg.projection_dim = 8
    CLIPModel(cfg).save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", wrong / "model.safetensors")
    with pytest.raises(T2IError, match="its weights do not fit its config.json: 2 tensors of another shape \\(e.g. [a-z_]+_projection.weight: "
                       "\\(8, 32\\) in the file, \\(16, 32\\) in the config\\)"):
        load_clip(wrong)
    from safetensors.torch import load_file, save_file

    part = {k: v for k, v in load_file(clip_dir / "model.safetensors").items() if k != "text_projection.weight"}
    save_file(part, wrong / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(T2IError, match="its weights do not fit its config.json: 1 tensors missing \\(e.g. text_projection.weight\\)"):
        load_clip(wrong)


def test_wrong_inputs(scorer):
    with pytest.raises(T2IError, match="uint8 array \\(N, H, W, 3\\), got float32"):
        scorer.score(images(2).astype(np.float32), ["a", "b"])
    with pytest.raises(T2IError, match="2 images but 3 texts; give one text per image"):
        scorer.score(images(2), ["a", "b", "c"])
    with pytest.raises(T2IError, match="non-empty 1-D array"):
        set_score([])
