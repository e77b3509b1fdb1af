"""``t2i run``: pipelines/mdmnist-cpu.toml made tiny with ``stage.key=value`` overrides (32 train
images, 2 steps per model, one-block models, an 8x8 token grid), run in a temporary folder through the command line in
process: every stage's outputs, a second run that runs nothing, an override that reruns only its
stage and what reads it, a longer run that resumes, a failing stage, --dry-run, --until and --only.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2i_data.errors import T2IError
from t2i_models.cli import main
from t2i_models.run import STATE_NAME, select, split_overrides

ROOT = Path(__file__).resolve().parents[1]
CPU = str(ROOT / "pipelines" / "mdmnist-cpu.toml")
STAGES = ["mdmnist", "tokenizer", "tokenize", "train_autoencoder", "encode", "train_prior.g1", "train_prior.g2", "train_clip",
          "eval_autoencoder", "eval_mdmnist"]
TINY = [
    "mdmnist.train=32", "mdmnist.test=8", "mdmnist.shard_size=16", "mdmnist.workers=0", "tokenize.workers=0",
    "encode.workers=0", "encode.check=4",
    "train_autoencoder.batch_size=16", "train_autoencoder.num_workers=0", "train_autoencoder.eval_n=4", "train_autoencoder.eval_every=1",
    "train_autoencoder.model.hidden=16", "train_autoencoder.model.downsamples=4", "train_autoencoder.model.vocab_size=32", "train_autoencoder.log_every=2",
    "train_prior.batch_size=16", "train_prior.num_workers=0", "train_prior.warmup=0", "train_prior.eval_n=4", "train_prior.eval_every=1",
    "train_prior.g1.model.layers=1", "train_prior.g1.model.width=32", "train_prior.g1.model.heads=2",
    "train_prior.g2.model.encoder_layers=1", "train_prior.g2.model.decoder_layers=1", "train_prior.g2.model.width=32",
    "train_prior.g2.model.heads=2",
    "train_clip.batch_size=16", "train_clip.epochs=1", "train_clip.num_workers=0", "train_clip.model.layers=1",
    "train_clip.model.width=32", "train_clip.model.mlp=64", "train_clip.model.embed=32", "train_clip.model.heads=2",
    "train_clip.model.patch=32",
    "eval_autoencoder.n=4", "eval_autoencoder.batch_size=4",
    "eval_mdmnist.n=4", "eval_mdmnist.batch_size=4", "eval_mdmnist.eval_samples=8", "eval_mdmnist.grid_prompts=2",
    "eval_mdmnist.grid_samples=1", "eval_mdmnist.device=cpu",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a small, shared CPU torch's default threads wait on each other (a tiny
    prior's sampling ran 50x slower with 2 threads on a loaded 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def t2i_run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["-q", "run", CPU, *TINY, *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def plan_states(out: str) -> dict[str, str]:
    """{stage: state text} from the printed plan."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0].rstrip(".").isdigit() and parts[1] in STAGES:
            rows[parts[1]] = line.split(parts[1], 1)[1].split(" -> ")[0].strip()
    return rows


def ran(out: str) -> list[str]:
    return [line.split("] ")[1].split(":")[0] for line in out.splitlines() if line.startswith("[") and line.endswith(("running", "resuming"))]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def done(tmp_path_factory, one_torch_thread):
    """The tiny pipeline run once, from nothing, in its own folder; (folder, printed output)."""
    import contextlib
    import io
    import os

    where = tmp_path_factory.mktemp("cpu")
    old = os.getcwd()
    os.chdir(where)
    try:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["-q", "run", CPU, *TINY])
    finally:
        os.chdir(old)
    assert rc == 0, out.getvalue()
    return where, out.getvalue()


def test_a_first_run_runs_every_stage_in_order_and_each_output_checks(done):
    from t2i_data.verify import verify_path
    from t2i_models.checkpoint import load_checkpoint_dict

    where, out = done
    states = plan_states(out)
    assert list(states) == STAGES and states["mdmnist"] == states["tokenizer"] == "to run (no outputs)"
    assert states["encode"] == "to run (after mdmnist, train_autoencoder)" and states["train_prior.g2"] == "to run (after tokenize, encode)"
    assert ran(out) == STAGES
    assert all(f"{s}: done in " in out for s in STAGES)
    for folder, splits in (("data/mdmnist-cpu", 2), ("data/mdmnist-cpu-text", 2), ("data/mdmnist-cpu-img", 2)):
        found = verify_path(where / folder)
        assert len(found) == splits and all(c.status == "ok" for _, _, checks in found for c in checks)
    samples = {s: json.loads((where / "data/mdmnist-cpu-img" / s / "manifest.json").read_text())["totals"]["samples"] for s in ("train", "test")}
    assert samples == {"train": 32, "test": 8}
    for run, steps in (("dvae", 2), ("g1", 2), ("g2", 2), ("clip", 2)):  # 32 images / 16 per batch, one epoch
        ck = load_checkpoint_dict(where / f"runs/mdmnist-cpu-{run}/last.pt")
        assert ck["step"] == steps, run
        state = json.loads((where / f"runs/mdmnist-cpu-{run}" / STATE_NAME).read_text())
        assert state["status"] == "done" and state["output"] == {"fingerprint": ck["fingerprint"], "step": steps}
    ae = json.loads((where / "runs/mdmnist-cpu-eval-dvae/report.json").read_text())
    assert {"mse", "psnr", "bce", "codes_used", "perplexity"} <= set(ae)
    ev = json.loads((where / "runs/mdmnist-cpu-eval/report.json").read_text())
    assert {"cics", "ctrs", "clip", "loss", "priors"} <= set(ev) and ev["cics"]["n"] == 4
    enc = json.loads((where / "data/mdmnist-cpu-img" / STATE_NAME).read_text())
    assert set(enc["inputs"]) == {"mdmnist", "train_autoencoder"} and enc["config"]["views"] == 1 and "workers" not in enc["config"]


def test_a_second_run_finds_every_stage_done_and_runs_nothing(done, capsys, monkeypatch):
    where, _ = done
    monkeypatch.chdir(where)
    before = snapshot(where)
    rc, out, _ = t2i_run(capsys)
    assert rc == 0 and set(plan_states(out).values()) == {"done (verified)"} and len(plan_states(out)) == 10
    assert ran(out) == [] and "nothing to run: every chosen stage is done" in out
    assert snapshot(where) == before


def test_dry_run_touches_nothing_and_shows_what_an_override_would_rerun(done, capsys, monkeypatch):
    where, _ = done
    monkeypatch.chdir(where)
    before = snapshot(where)
    rc, out, _ = t2i_run(capsys, "train_prior.g2.lr=0.002", "--dry-run")
    assert rc == 0 and snapshot(where) == before and ran(out) == []
    states = plan_states(out)
    assert states["train_prior.g2"] == "to run (settings changed: lr 0.001 → 0.002)"
    assert states["eval_mdmnist"] == "to run (after train_prior.g2)"
    assert [s for s, v in states.items() if v != "done (verified)"] == ["train_prior.g2", "eval_mdmnist"]


def test_an_override_reruns_only_its_stage_and_what_reads_it_then_a_longer_run_resumes(done, capsys, monkeypatch):
    from t2i_models.checkpoint import load_checkpoint_dict

    where, _ = done
    monkeypatch.chdir(where)
    g1_before = (where / "runs/mdmnist-cpu-g1/last.pt").read_bytes()
    rc, out, _ = t2i_run(capsys, "train_prior.g2.lr=0.002")
    assert rc == 0 and ran(out) == ["train_prior.g2", "eval_mdmnist"]
    assert "train_prior.g2: outputs made with other settings moved to runs/mdmnist-cpu-g2.replaced" in out
    assert (where / "runs/mdmnist-cpu-g2.replaced/last.pt").is_file()
    assert load_checkpoint_dict(where / "runs/mdmnist-cpu-g2/last.pt")["train_config"]["lr"] == 0.002
    assert (where / "runs/mdmnist-cpu-g1/last.pt").read_bytes() == g1_before
    # the same override again: done; without it, the file's value: g2 runs again
    rc, out, _ = t2i_run(capsys, "train_prior.g2.lr=0.002", "--dry-run")
    assert set(plan_states(out).values()) == {"done (verified)"}
    # a longer run of G1 resumes its checkpoint at step 2 and goes on to 4
    rc, out, _ = t2i_run(capsys, "train_prior.g2.lr=0.002", "train_prior.g1.epochs=2")
    states = plan_states(out)
    assert states["train_prior.g1"] == "partly done (checkpoint at step 2; length changed: epochs 1 → 2, resumes)"
    assert rc == 0 and ran(out) == ["train_prior.g1", "eval_mdmnist"] and "[1/2] train_prior.g1: resuming" in out
    assert load_checkpoint_dict(where / "runs/mdmnist-cpu-g1/last.pt")["step"] == 4


def test_a_stage_whose_inputs_come_out_as_before_is_not_redone(done, capsys, monkeypatch):
    """A run stopped after the dVAE's last checkpoint but before t2i run recorded it: the dVAE
    'resumes' (nothing left to train), and what reads it is checked again, found done, and kept."""
    where, _ = done
    monkeypatch.chdir(where)
    state = where / "runs/mdmnist-cpu-dvae" / STATE_NAME
    state.write_text(json.dumps(dict(json.loads(state.read_text()), status="running")))
    g2 = (where / "runs/mdmnist-cpu-g2/last.pt").read_bytes()
    rc, out, _ = t2i_run(capsys, "train_prior.g2.lr=0.002", "train_prior.g1.epochs=2")
    assert plan_states(out)["train_autoencoder"] == "partly done (checkpoint at step 2, resumes)"
    assert plan_states(out)["encode"] == "to run (after train_autoencoder)"
    assert rc == 0 and ran(out) == ["train_autoencoder"] and "ran 1 stage(s)" in out
    assert "[2/7] encode: done (verified): its inputs came out as before" in out
    assert (where / "runs/mdmnist-cpu-g2/last.pt").read_bytes() == g2


def test_a_failing_stage_stops_the_run_with_one_message_naming_it(done, capsys, monkeypatch):
    where, _ = done
    monkeypatch.chdir(where)
    rc, out, err = t2i_run(capsys, "train_prior.g2.lr=0.002", "train_prior.g1.epochs=2", "eval_autoencoder.images=data/nowhere/test")
    assert rc == 2 and ran(out) == ["eval_autoencoder"]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2i: error: stage eval_autoencoder failed: ")
    assert "rerun the same t2i run: stages already done are skipped" in lines[0] and "data/nowhere/test" in lines[0]
    assert json.loads((where / "runs/mdmnist-cpu-eval-dvae" / STATE_NAME).read_text())["status"] == "running"


def test_until_and_only_choose_the_stages(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = t2i_run(capsys, "--until", "tokenize")
    assert rc == 0 and ran(out) == ["mdmnist", "tokenizer", "tokenize"] and not (tmp_path / "runs").exists()
    assert plan_states(out)["train_autoencoder"] == "to run (after mdmnist)"  # the plan before the run
    assert out.count("[not selected]") == 7
    rc, out, err = t2i_run(capsys, "--only", "train_clip")
    assert rc == 2 and ran(out) == []
    assert "stage train_clip reads the outputs of train_autoencoder, encode, which are not done" in err
    rc, out, err = t2i_run(capsys, "--only", "mdmnist,tokenizer")
    assert rc == 0 and ran(out) == [] and "nothing to run" in out


def test_stage_names_overrides_and_selection_are_checked():
    names = ["mdmnist", "train_prior.g1", "train_prior.g2", "train_clip"]
    assert split_overrides(["train_prior.g1.model.layers=4", "train_prior.lr=0.01", "train_clip.epochs=2"], names) == {
        "mdmnist": [], "train_prior.g1": ["model.layers=4", "lr=0.01"], "train_prior.g2": ["lr=0.01"], "train_clip": ["epochs=2"]}
    with pytest.raises(T2IError, match="no stage 'train_autoencoder' in this pipeline"):
        split_overrides(["train_autoencoder.lr=0.01"], names)
    with pytest.raises(T2IError, match="is not stage.key=value"):
        split_overrides(["train_clip.lr"], names)

    class S:
        def __init__(self, name):
            self.name = name

    stages = [S(n) for n in names]
    assert select(stages, "train_prior", None) == {"mdmnist", "train_prior.g1", "train_prior.g2"}
    assert select(stages, None, "train_prior.g2,train_clip") == {"train_prior.g2", "train_clip"}
    with pytest.raises(T2IError, match="--until encode: no such stage"):
        select(stages, "encode", None)


def test_wrong_pipeline_files_stop_with_one_message(tmp_path, capsys):
    bad = tmp_path / "p.toml"
    for text, message in (("[train_autoencodr]\nlr = 1\n", "[train_autoencodr] is no stage"),
                          ("[tokenizer]\nkind = 'mdmnist'\n", "out needed"),
                          ("[train_clip]\nout = 'x'\nepoch = 3\n", "unknown setting(s) epoch"),
                          ("[mdmnist]\nout = 'x'\ntrain = -1\n", "mdmnist.train: needs a number of at least 0")):
        bad.write_text(text)
        assert main(["-q", "run", str(bad), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["-q", "run", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train_clip.model.nosuch=1", r"\[train_clip\]: model.nosuch: not a setting of clip_mdmnist; known: .*patch"),
    ("train_prior.g1.model.nosuch=1", r"\[train_prior.g1\]: model.nosuch: not a setting of g1_mdmnist"),
    ("train_autoencoder.model.kl_mode=foo", r"\[train_autoencoder\]: dvae_mdmnist: kl_mode must be one of batch, image, got 'foo'"),
    ("train_prior.g2.model.decoder_layers=x", r"\[train_prior.g2\]: model.decoder_layers: needs a whole number, got 'x'"),
    ("train_prior.g2.out=runs/mdmnist-cpu-g1", r"\[train_prior.g2\]: out=runs/mdmnist-cpu-g1 is also the out of \[train_prior.g1\]"),
    ("train_prior.g9.lr=1", r"no stage train_prior.g9 in this pipeline"),
])
def test_wrong_model_settings_and_shared_out_folders_stop_before_anything_is_moved(done, capsys, monkeypatch, override, message):
    """A misspelt model.<field>, a bad model value or two stages writing one folder stop when the
    plan is made, in one line, with the trained checkpoints where they were (a stage whose settings
    changed would otherwise have its checkpoint moved to <out>.replaced before failing)."""
    import re

    where, _ = done
    monkeypatch.chdir(where)
    before = snapshot(where)
    rc, out, err = t2i_run(capsys, override)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and re.search(message, lines[0]), err
    assert snapshot(where) == before  # nothing written, nothing moved to <out>.replaced


@pytest.mark.parametrize("command", [["plot", "runs/mdmnist-cpu-g1", "--out", "FILE"],
                                     ["eval", "autoencoder", "--autoencoder", "runs/mdmnist-cpu-dvae/last.pt", "--images",
                                      "data/mdmnist-cpu/test", "--out", "FILE"]])
def test_figure_commands_refuse_an_out_that_is_a_file(done, capsys, monkeypatch, command):
    where, _ = done
    monkeypatch.chdir(where)
    (where / "FILE").write_text("x")
    assert main(["-q", *command]) == 2
    assert capsys.readouterr().err.strip() == "t2i: error: --out FILE: a file, not a folder; give a folder for the figures"


def test_shard_stages_share_one_runner_per_command_and_it_closes_before_training(tmp_path, capsys, monkeypatch):
    # mdmnist and tokenize (tokenizer between them) take the same runner; a training stage closes it
    from t2i_data import runner as runner_mod

    events = []

    class Recording(runner_mod.InProcessRunner):
        def __init__(self, workers):
            events.append(("made", workers))

        def close(self, summary=True):
            events.append(("closed",))

    monkeypatch.setattr(runner_mod, "make_runner", lambda workers, scheduler: Recording(workers))
    monkeypatch.chdir(tmp_path)
    rc, out, err = t2i_run(capsys, "--until", "train_autoencoder", "train_autoencoder.steps=1")
    assert rc == 0, out + err
    assert ran(out) == ["mdmnist", "tokenizer", "tokenize", "train_autoencoder"]
    assert events == [("made", 0), ("closed",)]  # one runner for both shard stages, closed before training


def test_a_failed_stage_closes_its_runners_without_their_summary_line(tmp_path, capsys, monkeypatch):
    from t2i_data import runner as runner_mod
    from t2i_data.errors import T2IError
    from t2i_models import run as run_mod

    closed = []

    class Recording(runner_mod.InProcessRunner):
        def close(self, summary=True):
            closed.append(summary)

    def failing(s, runners):
        runners.get(None)  # the stage took its runner, then failed
        raise T2IError("the stage failed")

    monkeypatch.setattr(runner_mod, "make_runner", lambda workers, scheduler: Recording())
    monkeypatch.setattr(run_mod, "execute", failing)
    monkeypatch.chdir(tmp_path)
    rc, out, err = t2i_run(capsys, "--until", "mdmnist")
    assert rc == 2 and "the stage failed" in err
    assert closed == [False]  # closed once, told not to add a line after the failure's
