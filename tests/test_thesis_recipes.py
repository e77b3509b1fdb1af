"""pipelines/thesis-*.toml hold the thesis' recipes exactly: every value of Tables 5-8
(../shared/seeds/003_b7ed3648fbeedb40.txt, Section 5) is transcribed here with its table, column and
row, and compared with what ``t2i run`` resolves from the files: the trainer's dataclass through
``run.stage_config`` (defaults, table, sub-table), the model's config through its builder with the
file's ``model.<field>`` settings (built on the meta device: no weights are allocated).

Where the thesis disagrees with itself the files choose, and say why beside the value; the rows
below name the table the chosen value comes from:
- dVAE 64x64 KL end value: Table 7's 0.001 (Table 5: 0.0001).
- CUB-128 dVAE tau iterations: Table 7's 140,000 (Table 5's 150-epoch runs: 80,000).
- "Hidden dim." of the Transformers (Tables 6, 7) is the MLP's hidden width (Table 8 lists CLIP's
  representation dim. 128 beside hidden dim. 256); the model width is the thesis code's (256 on
  MD-MNIST, the builders' 512 on CUB).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from t2i_models.cli import main
from t2i_models.run import load_stages, stage_config

ROOT = Path(__file__).resolve().parents[1]
FILES = {"mdmnist": ROOT / "pipelines" / "thesis-mdmnist.toml", "cub64": ROOT / "pipelines" / "thesis-cub64.toml",
         "cub128": ROOT / "pipelines" / "thesis-cub128.toml"}
# Token spaces come from the token shards' manifests at training time; these stand in for them here.
TOKENS = {"mdmnist": dict(text_vocab=24, text_len=12, pad_id=20, image_vocab=256, grid=32),
          "cub64": dict(text_vocab=5000, text_len=64, pad_id=0, image_vocab=512, grid=16),
          "cub128": dict(text_vocab=5000, text_len=64, pad_id=0, image_vocab=512, grid=32)}


def resolved(file: str, stage: str) -> dict:
    """The trainer's settings and ``model.<field>`` of the model config its builder makes, flattened."""
    cfg = stage_config(FILES[file], stage)
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"}
    with torch.device("meta"):
        if stage == "train_autoencoder":
            from t2i_models.builders import build_autoencoder

            model = build_autoencoder(cfg.arch, **cfg.model)
        elif stage.startswith("train_prior"):
            from t2i_models.prior_builders import PRIORS

            model = PRIORS[cfg.arch](**TOKENS[file], **cfg.model)
        else:
            from t2i_models.clip import CLIPS

            model = CLIPS[cfg.arch](image_size=128, **cfg.model)
    values.update({f"model.{k}": v for k, v in dataclasses.asdict(model.cfg).items()})
    return values


# (file, stage, table, column, row, setting, value)
ROWS = [
    # ---- Table 6: MD-MNIST, dVAE parameters (the same dVAE under G1 and G2) ----
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "Num. epochs", "epochs", 30),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "Batch size", "batch_size", 32),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "Learning rate (LR)", "lr", 0.01),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "LR gamma", "lr_gamma", 0.1),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "LR milestones", "milestones", [5, 10]),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "tau start value", "model.tau_start", 5.0),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "tau end value", "model.tau_end", 0.01),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "tau iterations", "model.tau_steps", 3000),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "KL coef. value", "model.kl_weight", 0.01),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "KL coef. value (fixed)", "model.kl_steps", 0),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "Num. downsamples", "model.downsamples", 2),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "N_RD", "model.n_rd", 4),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "N_RB", "model.n_rb", 4),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "Hidden dim.", "model.hidden", 256),
    ("mdmnist", "train_autoencoder", "Section 5.3.1", "dVAE", "Adam optimizer", "optimizer", "adam"),
    ("mdmnist", "train_autoencoder", "Table 6", "dVAE", "multi-step LR (Section 5.2)", "lr_schedule", "multistep"),
    ("mdmnist", "train_autoencoder", "thesis code", "dVAE", "KL of each image's code usage", "model.kl_mode", "image"),
    ("mdmnist", "train_autoencoder", "thesis code", "dVAE", "vocabulary", "model.vocab_size", 256),
    ("mdmnist", "train_autoencoder", "MD-MNIST", "dVAE", "image size", "model.image_size", 128),
    # ---- Table 6: MD-MNIST, Transformer parameters ----
    *[("mdmnist", f"train_prior.{g}", "Table 6", col, row, key, value)
      for g, col in (("g1", "G1 (joint encoder)"), ("g2", "G2 (sep. encoder)"))
      for row, key, value in (("Num. epochs", "epochs", 20), ("Batch size", "batch_size", 12), ("Learning rate (LR)", "lr", 0.001),
                              ("LR gamma", "lr_gamma", 0.1), ("LR milestones", "milestones", [5, 10]),
                              ("Num attention heads", "model.heads", 8), ("DropOut prob.", "model.dropout", 0.1),
                              ("Hidden dim. (the MLP's)", "model.mlp", 512), ("Adam (Section 5.3.1)", "optimizer", "adam"),
                              ("Adam: no weight decay", "weight_decay", 0.0), ("multi-step LR", "lr_schedule", "multistep"),
                              ("no warmup", "warmup", 0), ("width (thesis code)", "model.width", 256))],
    ("mdmnist", "train_prior.g1", "Table 6", "G1 (joint encoder)", "Num. encoder blocks (text and image)", "model.layers", 12),
    ("mdmnist", "train_prior.g2", "Table 6", "G2 (sep. encoder)", "Num. encoder blocks (image)", "model.decoder_layers", 12),
    ("mdmnist", "train_prior.g2", "Table 6", "G2 (sep. encoder)", "Num. text encoder blocks", "model.encoder_layers", 6),
    # ---- Table 8: the evaluation CLIP ----
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Num. epochs", "epochs", 30),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Batch size", "batch_size", 64),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Learning rate (LR)", "lr", 0.001),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "LR gamma", "lr_gamma", 0.1),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "LR milestones", "milestones", [20]),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "multi-step LR", "lr_schedule", "multistep"),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Num. encoder blocks", "model.layers", 8),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Num attention heads", "model.heads", 8),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "DropOut prob.", "model.dropout", 0.1),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Representation dim.", "model.width", 128),
    ("mdmnist", "train_clip", "Table 8", "CLIP", "Hidden dim.", "model.mlp", 256),
    # ---- Table 7: CUB, dVAE parameters ----
    *[(f, "train_autoencoder", table, col, row, key, value)
      for f, col, rows in (
          ("cub64", "CUB 64", (("Num. epochs", "epochs", 500), ("Batch size", "batch_size", 64), ("LR milestones", "milestones", [20, 120]),
                               ("tau start value", "model.tau_start", 8.0), ("tau iterations", "model.tau_steps", 80000),
                               ("KL coef. end value", "model.kl_weight", 0.001), ("KL coef. iterations", "model.kl_steps", 70000),
                               ("image size", "model.image_size", 64))),
          ("cub128", "CUB 128", (("Num. epochs", "epochs", 250), ("Batch size", "batch_size", 16), ("LR milestones", "milestones", [5, 100]),
                                 ("tau start value", "model.tau_start", 5.0), ("tau iterations", "model.tau_steps", 140000),
                                 ("KL coef. end value", "model.kl_weight", 0.001), ("KL coef. iterations", "model.kl_steps", 100000),
                                 ("image size", "model.image_size", 128))))
      for table in ("Table 7",)
      for row, key, value in rows + (("Learning rate (LR)", "lr", 0.001), ("LR gamma", "lr_gamma", 0.1),
                                     ("tau end value", "model.tau_end", 0.01), ("KL coef. start value", "model.kl_start", 0.0),
                                     ("Num. downsamples", "model.downsamples", 2), ("N_RD", "model.n_rd", 6), ("N_RB", "model.n_rb", 4),
                                     ("Hidden dim.", "model.hidden", 512), ("multi-step LR (Section 5.2)", "lr_schedule", "multistep"),
                                     ("Adam (Section 5.2)", "optimizer", "adam"), ("KL of each image's code usage (thesis code)", "model.kl_mode", "image"))],
    ("cub64", "train_autoencoder", "Table 5", "dVAE 64x64", "Vocab. size", "model.vocab_size", 512),
    ("cub128", "train_autoencoder", "Table 5", "dVAE", "Vocab. size", "model.vocab_size", 512),
    # ---- Table 7: CUB, Transformer parameters (G2, separate text encoder) ----
    *[(f, "train_prior", "Table 7", col, row, key, value)
      for f, col, rows in (
          ("cub64", "CUB 64", (("Num. epochs", "epochs", 1000), ("Batch size", "batch_size", 120), ("LR milestones", "milestones", [100, 500]),
                               ("Num. image encoder blocks", "model.decoder_layers", 14), ("Num. text encoder blocks", "model.encoder_layers", 8))),
          ("cub128", "CUB 128", (("Num. epochs", "epochs", 400), ("Batch size", "batch_size", 32), ("LR milestones", "milestones", [20]),
                                 ("Num. image encoder blocks", "model.decoder_layers", 12), ("Num. text encoder blocks", "model.encoder_layers", 16))))
      for row, key, value in rows + (("Learning rate (LR)", "lr", 0.001), ("LR gamma", "lr_gamma", 0.1), ("Num attention heads", "model.heads", 8),
                                     ("DropOut prob.", "model.dropout", 0.1), ("Hidden dim. (the MLP's)", "model.mlp", 512),
                                     ("Adam (Section 5.2)", "optimizer", "adam"), ("Adam: no weight decay", "weight_decay", 0.0),
                                     ("multi-step LR", "lr_schedule", "multistep"), ("no warmup", "warmup", 0))],
]


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.mark.parametrize("file,stage,table,column,row,key,value", ROWS, ids=[f"{r[0]}-{r[2]}-{r[3]}-{r[4]}" for r in ROWS])
def test_the_thesis_files_hold_the_tables(file, stage, table, column, row, key, value, cache):
    if (file, stage) not in cache:
        cache[file, stage] = resolved(file, stage)
    got = cache[file, stage][key]
    assert got == (pytest.approx(value) if isinstance(value, float) else value), f"{table}, {column}, {row}: {key} = {got!r}"


def test_the_builders_hold_the_architectures_the_tables_give():
    """Without the files' settings: g2_cub64 has Table 7's 14 image and 8 text blocks, and every
    thesis VQ-VAE has codewords of the vocabulary's size (Table 5's note)."""
    from t2i_models.builders import CONFIGS
    from t2i_models.prior_builders import PRIORS

    with torch.device("meta"):
        g2 = PRIORS["g2_cub64"](**TOKENS["cub64"])
    assert (g2.cfg.decoder_layers, g2.cfg.encoder_layers) == (14, 8)
    for arch in ("vqvae_mdmnist", "vqvae_cub64", "vqvae_cub128"):
        assert CONFIGS[arch].dim == CONFIGS[arch].vocab_size, arch


def test_every_stage_of_the_thesis_files_resolves_and_the_chain_is_complete():
    names = {f: [s.name for s in load_stages(p, [])] for f, p in FILES.items()}
    assert names["mdmnist"] == ["mdmnist", "tokenizer", "tokenize", "train_autoencoder", "encode", "train_prior.g1", "train_prior.g2",
                                "train_clip", "eval_autoencoder", "eval_mdmnist"]
    for f in ("cub64", "cub128"):
        assert names[f] == ["preprocess.ae", "preprocess.prior", "tokenizer", "tokenize", "train_autoencoder", "encode", "train_prior",
                            "eval_autoencoder"]
    stages = {s.name: s for s in load_stages(FILES["cub64"], [])}
    assert (stages["preprocess.ae"].cfg.regime, stages["preprocess.prior"].cfg.regime) == ("ae", "prior")
    assert stages["preprocess.ae"].cfg.size == 64 and stages["train_prior"].deps == ["tokenize", "encode"]


@pytest.mark.parametrize("file", sorted(FILES))
def test_dry_run_prints_the_plan_and_touches_nothing(file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "run", str(FILES[file]), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"plan for {FILES[file]}") and out.count("to run") >= 8
    assert os.listdir(tmp_path) == []
