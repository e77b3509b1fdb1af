"""CLIP score with a pretrained CLIP read from a local folder (issue 19, item 4).

The folder is the layout the published OpenAI CLIPs are distributed in for ``transformers``
(``openai/clip-vit-base-patch32``: ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
``vocab.json`` + ``merges.txt`` and/or ``tokenizer.json``, ``preprocessor_config.json``), read
with ``local_files_only=True``: nothing is ever downloaded. ``transformers`` is used, not
``open_clip`` (the issue's first choice): open_clip 3.3.0 imports its transform module, which
imports torchvision, and torchvision 0.29 fails to import beside torch 2.13 here ("operator
torchvision::nms does not exist"), so open_clip cannot even be imported.

Definition (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning", eq. 1: CLIP-S(c, v) = w · max(cos(c, v), 0), with w = 2.5 there), in the scale
torchmetrics' ``CLIPScore`` uses (``torchmetrics/functional/multimodal/clip_score.py``, 1.9.0:
"CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0)"): w = 100, E_I and E_C the image and text
embeddings (``get_image_features`` / ``get_text_features``: the projected pooled outputs) each
L2-normalised. ``CLIPScorer.score`` gives it per image, ``CLIPScorer.similarity`` the same
without the floor. torchmetrics' module metric floors the *mean* of the unfloored values
(``compute``: max(sum / n, 0)); ``set_score`` gives that number from ``similarity`` values.

Where this differs from torchmetrics 1.9.0 on purpose:
- Texts over the text tower's context (77 tokens with start and end for the OpenAI CLIPs) are
  cut by the tokenizer, which keeps the end token last, as OpenAI's ``clip.tokenize(truncate=True)``
  does; torchmetrics slices the token ids, which drops the end token the text features are
  pooled at. Every cut text is counted (``last_truncated``, ``truncated``) and logged.
- Images go through the PIL image processor (``CLIPImageProcessorPil`` in transformers 5; the
  plain ``CLIPImageProcessor`` there wants torchvision): bicubic resize of the shorter side,
  centre crop, mean/std, the preprocessing OpenAI's CLIP applies with PIL. For texts within the
  context and the same processor, the values are torchmetrics' (``tests/test_clip_score.py``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from t2i_data.digest import file_sha256
from t2i_data.errors import T2IError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # the order transformers prefers them in
HOLDS = ("config.json (a CLIPModel config, model_type \"clip\"), model.safetensors or pytorch_model.bin, the tokenizer "
         "(vocab.json + merges.txt, or tokenizer.json) and preprocessor_config.json, as the published OpenAI CLIP folders "
         "(e.g. openai/clip-vit-base-patch32) hold them; nothing is downloaded")


def weight_files(folder: Path) -> list[Path]:
    """The weight files ``CLIPModel.from_pretrained`` reads from ``folder``: ``model.safetensors``,
    else the shards a ``model.safetensors.index.json`` names, else ``pytorch_model.bin``.
    ``T2IError`` when there are none, or an index names a file that is missing."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_bytes())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise T2IError(f"--clip {folder}: {index.name} is not a safetensors index ({type(e).__name__}); the folder must hold {HOLDS}") from None
        bad = [n for n in names if not isinstance(n, str) or "/" in n or n.startswith(".") or not (folder / n).is_file()]
        if bad:
            raise T2IError(f"--clip {folder}: {index.name} names {bad[0]!r}, which is not a file in the folder; the folder must hold {HOLDS}")
        return [folder / n for n in names]
    if (folder / "pytorch_model.bin").is_file():
        return [folder / "pytorch_model.bin"]
    raise T2IError(f"--clip {folder}: no weights (model.safetensors or pytorch_model.bin); the folder must hold {HOLDS}")


def weights_fingerprint(files: list[Path]) -> str:
    """sha256 of the one weights file (so it equals the published file's sha256), or, for a
    sharded checkpoint, the sha256 of the lines ``<name> <sha256>\\n`` of its shards in name order."""
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("".join(f"{p.name} {file_sha256(p)}\n" for p in files).encode()).hexdigest()


def _device(device) -> torch.device:
    d = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if d.type == "cuda" and not torch.cuda.is_available():
        raise T2IError(f"--device {device}: no CUDA device here; use --device cpu")
    return d


def load_clip(path, device="cpu") -> "CLIPScorer":
    """The CLIP in local folder ``path`` (module docstring), in float32 on ``device`` ("cpu",
    "cuda", "auto" or a ``torch.device``), in eval mode.

    Raises ``T2IError`` (one line, naming what the folder must hold and that nothing is
    downloaded) for: a missing folder; no config.json, or one that is not a CLIP config
    (``model_type`` other than "clip"; a t2i weights folder from ``t2i export-weights``, said so); no weights; no tokenizer or preprocessor files; weights
    that do not fit the config (missing or mis-shaped tensors: transformers would fill those
    with random values and only log it); a folder transformers cannot read."""
    folder = Path(path)
    if folder.is_file():
        raise T2IError(f"--clip {folder}: a file, not a folder; --clip takes a transformers CLIP folder, which must hold {HOLDS}")
    if not folder.is_dir():
        raise T2IError(f"--clip {folder}: no such folder; it must hold {HOLDS}")
    try:
        config = json.loads((folder / "config.json").read_bytes())
    except FileNotFoundError:
        raise T2IError(f"--clip {folder}: no config.json; the folder must hold {HOLDS}") from None
    except ValueError as e:
        raise T2IError(f"--clip {folder}: config.json is not JSON ({e}); the folder must hold {HOLDS}") from None
    if isinstance(config, dict) and ("export_format" in config or str(config.get("model_type")).startswith("t2i_")):
        raise T2IError(f"--clip {folder}: a t2i weights folder ('t2i export-weights' of a {config.get('kind')}), not a transformers CLIP; "
                       f"this --clip takes a transformers CLIP folder ({HOLDS}); a t2i CLIP goes to 't2i eval priors|mdmnist --clip'")
    if not isinstance(config, dict) or config.get("model_type") != "clip":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise T2IError(f"--clip {folder}: config.json describes model_type {kind!r}, not a CLIP (\"clip\"); the folder must hold {HOLDS}")
    files = weight_files(folder)
    if not ((folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        raise T2IError(f"--clip {folder}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json); the folder must hold {HOLDS}")
    if not (folder / "preprocessor_config.json").is_file():
        raise T2IError(f"--clip {folder}: no preprocessor_config.json (image size, crop, mean and std); the folder must hold {HOLDS}")
    from transformers import CLIPModel, CLIPTokenizer

    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5: the PIL backend (module docstring)
    except ImportError:
        from transformers import CLIPImageProcessor as Processor  # transformers 4: the PIL-based one
    try:
        # mis-shaped tensors are reported (and refused below) rather than raised as transformers' multi-line report
        model, info = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32, output_loading_info=True,
                                                ignore_mismatched_sizes=True)
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        processor = Processor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise T2IError(f"--clip {folder}: transformers cannot read it ({type(e).__name__}: {first}); the folder must hold {HOLDS}") from None
    missing, shapes = list(info.get("missing_keys") or []), list(info.get("mismatched_keys") or [])
    if missing or shapes:
        what = (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing
                else f"{len(shapes)} tensors of another shape (e.g. {shapes[0][0]}: {tuple(shapes[0][1])} in the file, {tuple(shapes[0][2])} in the config)")
        raise T2IError(f"--clip {folder}: its weights do not fit its config.json: {what}; the folder must hold one CLIP's "
                       f"config and weights together ({HOLDS})")
    unexpected = list(info.get("unexpected_keys") or [])
    if unexpected:
        log.warning("--clip %s: %d tensors in the weights that CLIPModel does not use (e.g. %s); ignored", folder, len(unexpected), unexpected[0])
    return CLIPScorer(model.eval().to(_device(device)), tokenizer, processor, files)


def set_score(similarities) -> float:
    """torchmetrics' ``CLIPScore().compute()`` over a set: max(mean of the unfloored 100 · cos, 0)
    (``similarities``: ``CLIPScorer.similarity`` values, float64). Differs from the mean of
    ``score`` only when some image's cosine is negative."""
    s = np.asarray(similarities, dtype=np.float64)
    if s.ndim != 1 or not len(s):
        raise T2IError(f"set_score needs a non-empty 1-D array of similarities, got shape {s.shape}")
    return max(float(s.mean()), 0.0)


class CLIPScorer:
    """A loaded CLIP: ``score`` / ``similarity`` of images with texts, ``fingerprint`` (sha256 of
    the weights file(s), ``weights_fingerprint``) and ``info`` (architecture, image size, text
    length, weight file names). ``last_truncated`` / ``truncated``: (image, text) pairs whose text
    was cut to the context in the last ``similarity`` / ``score`` call / since loading."""

    def __init__(self, model, tokenizer, processor, files: list[Path]) -> None:
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.device = next(model.parameters()).device
        tc, vc = model.config.text_config, model.config.vision_config
        self.context = int(tc.max_position_embeddings)  # tokens the text tower sees, start and end tokens included
        self.fingerprint = weights_fingerprint(files)
        self.info = {
            "architecture": (f"CLIPModel: ViT patch {vc.patch_size}, width {vc.hidden_size}, {vc.num_hidden_layers} layers; "
                             f"text width {tc.hidden_size}, {tc.num_hidden_layers} layers, vocabulary {tc.vocab_size}; "
                             f"embedding {model.config.projection_dim}"),
            "image_size": int(vc.image_size),
            "text_length": self.context,
            "weights": [p.name for p in files],
            "fingerprint": self.fingerprint,
            "preprocess": f"{type(processor).__name__}: shorter side to {processor.size['shortest_edge']} (PIL resample "
                          f"{processor.resample}), centre crop {processor.crop_size['height']}x{processor.crop_size['width']}, "
                          f"mean {list(processor.image_mean)}, std {list(processor.image_std)}",
        }
        self.truncated = 0
        self.last_truncated = 0
        self._cut = np.zeros(0, dtype=bool)  # per text of the last text_features call: longer than the context

    def _check(self, images, texts) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise T2IError(f"CLIP score: images must be a uint8 array (N, H, W, 3), got {got}")
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise T2IError(f"CLIP score: texts must be a list of str, got {type(texts).__name__}")
        if len(texts) != len(images):
            raise T2IError(f"CLIP score: {len(images)} images but {len(texts)} texts; give one text per image")

    @torch.inference_mode()
    def image_features(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, D) float32 L2-normalised image embeddings, on the CLIP's device."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)  # (N, 3, S, S)
        f = _tensor(self.model.get_image_features(pixel_values=pixels))
        return f / f.norm(p=2, dim=-1, keepdim=True)

    @torch.inference_mode()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """N texts → (N, D) float32 L2-normalised text embeddings; texts over the context are cut to
        it, end token kept, and counted (a warning names the count; ``similarity`` adds them up per pair)."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts))["input_ids"]]  # start and end tokens included
        self._cut = np.array([n > self.context for n in lengths], dtype=bool)
        cut = int(self._cut.sum())
        self.last_truncated = cut
        if cut:
            log.warning("CLIP score: %d of %d distinct texts are longer than the CLIP's %d-token context (longest %d tokens) and were cut to it",
                        cut, len(texts), self.context, max(lengths))
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.context, return_tensors="pt")
        f = _tensor(self.model.get_text_features(input_ids=enc["input_ids"].to(self.device), attention_mask=enc["attention_mask"].to(self.device)))
        return f / f.norm(p=2, dim=-1, keepdim=True)

    def similarity(self, images: np.ndarray, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """100 · cos(E_I, E_C) per (image, text) pair, not floored: float64 (N,), in [-100, 100].

        ``images``: uint8 (N, H, W, 3) RGB; ``texts``: N strings; pairs are processed
        ``batch_size`` at a time (the value does not depend on it beyond float rounding).
        Raises ``T2IError`` for other shapes or dtypes, or N texts ≠ N images."""
        self._check(images, texts)
        if batch_size < 1:
            raise T2IError(f"CLIP score: batch_size must be at least 1, got {batch_size}")
        out, cut = [], 0
        for i in range(0, len(images), batch_size):
            e_i = self.image_features(images[i : i + batch_size])
            # each distinct text once (reranking scores N draws against one prompt): cut texts counted per pair
            unique, inverse = np.unique(np.asarray(texts[i : i + batch_size], dtype=object), return_inverse=True)
            e_c = self.text_features(list(unique))
            cut += int(self._cut[inverse].sum())
            out.append((100 * (e_i * e_c[torch.from_numpy(inverse).to(e_c.device)]).sum(dim=-1)).double().cpu().numpy())
        self.last_truncated = cut
        self.truncated += cut
        return np.concatenate(out) if out else np.zeros(0, np.float64)

    def score(self, images: np.ndarray, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """CLIP score per image: max(100 · cos(E_I, E_C), 0), float64 (N,) in [0, 100] (module
        docstring: Hessel et al. 2021 at torchmetrics' scale). Arguments and errors as ``similarity``."""
        return np.maximum(self.similarity(images, texts, batch_size), 0.0)


def _tensor(out) -> torch.Tensor:
    """The embedding tensor of ``get_*_features``: transformers 5 returns a model output whose
    ``pooler_output`` holds it, transformers 4 the tensor itself."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
