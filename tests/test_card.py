"""Dataset cards: README.md beside every shard set, from its manifest alone; a command that
rebuilds the same data; the card's YAML header lets datasets load the folder as it is."""
import json
import shlex

import pytest

from fixtures_interop import build_sets, md_sets  # sets HF_*_OFFLINE first

import datasets  # noqa: E402

from t2i_data.card import LICENCES, card_text  # noqa: E402
from t2i_models.cli import main  # noqa: E402
from t2i_data.manifest import load_manifest  # noqa: E402
from t2i_data.mdmnist import MDMNISTConfig, build  # noqa: E402
from t2i_data.runner import InProcessRunner  # noqa: E402

@pytest.fixture(scope="module")
def sets(md_tokens, tmp_path_factory):
    built = build_sets(tmp_path_factory.mktemp("card"))
    return md_sets(md_tokens) | {"cub": built["cub"] / "train", "coco": built["coco"], "coco_text": built["coco_text"]}


LICENCE_KEYS = {"mdmnist": ["mnist", "mnist-embedded"], "cub": ["cub", "cub-captions"], "coco": ["coco-annotations", "coco-images"],
                "text_tokens": ["mnist"], "image_tokens": ["mnist"], "coco_text": ["coco-annotations", "coco-images"]}


@pytest.mark.parametrize("name", sorted(LICENCE_KEYS))
def test_a_card_beside_every_shard_set_says_what_how_sources_counts_and_loading(sets, name):
    d = sets[name]
    m = load_manifest(d / "manifest.json")
    card = (d / "README.md").read_text(encoding="utf-8")
    assert card == card_text(m)  # written from the manifest, nothing else
    assert f"| {m['totals']['samples']:,} | {m['totals']['shards']:,} | {m['totals']['bytes']:,} | {m['totals']['quarantined']:,} |" in card
    assert m["digest"] in card and json.dumps(m["config"], sort_keys=True, indent=1) in card
    for key in LICENCE_KEYS[name]:
        assert f"| {LICENCES[key]['source']} | {LICENCES[key]['licence']} |" in card
    for src in m["sources"].values():
        for sha in src.get("files", {}).values():
            assert f"`{sha}`" in card
        if "digest" in src:
            assert f"`{src['digest']}`" in card  # a derived set names its image set
    for key in ("tokenizer", "autoencoder"):
        if key in m:
            assert f"| fingerprint | `{m[key]['fingerprint']}` |" in card
    first, last = m["shards"][0]["name"], m["shards"][-1]["name"]
    assert f'wds.WebDataset(DIR + "/{first[:-10]}{{{first[-10:-4]}..{last[-10:-4]}}}.tar"' in card
    header = card.split("---\n")[1]
    assert [ln.strip()[3:-1] for ln in header.splitlines() if ln.startswith("    - ")] == [s["name"] for s in m["shards"] if s["samples"]]
    for reason in {r["reason"].split(":")[0] for r in m["quarantined"]}:
        assert f"| {reason} | " in card


def test_datasets_loads_the_folder_through_the_card_header(sets, tmp_path):
    m = load_manifest(sets["cub"] / "manifest.json")
    assert any(s["samples"] == 0 for s in m["shards"])
    ds = datasets.load_dataset(str(sets["cub"]), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == m["totals"]["samples"] and set(ds.column_names) == {"jpg", "json", "__key__", "__url__"}


def test_cards_and_manifests_are_the_same_bytes_from_the_cli_and_the_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["mdmnist", "build", "--out", "md cli", "--train", "20", "--test", "4", "--shard-size", "8", "--seed", "2", "--workers", "0"]
    assert main(["-q", *argv]) == 0
    build(MDMNISTConfig(seed=2, train=20, test=4, shard_size=8), tmp_path / "lib", InProcessRunner())
    for split in ("train", "test"):
        for name in ("README.md", "manifest.json"):  # no argv, output folder or worker count in either
            assert (tmp_path / "md cli" / split / name).read_bytes() == (tmp_path / "lib" / split / name).read_bytes()
    card = (tmp_path / "lib" / "train" / "README.md").read_text()
    assert "```bash\nt2i mdmnist build --out OUT --seed 2 --train 20 --test 4 --shard-size 8 --mnist embedded --png-level 1\n```" in card


def test_a_library_build_card_reconstructs_a_command_that_rebuilds_the_same_data(sets, tmp_path):
    for name, subst in (("mdmnist", {}), ("cub", {"CUB_ROOT": str(sets["cub"].parent.parent / "cub-src")}),
                        ("coco_text", {"TOKENIZER_DIR": str(sets["coco_text"].parent / "tk-word"), "IMAGES_DIR": str(sets["coco"])})):
        d = sets[name]
        card = (d / "README.md").read_text()
        assert "This command rebuilds this data" in card
        if "tokenizer" in load_manifest(d / "manifest.json"):
            fp = load_manifest(d / "manifest.json")["tokenizer"]["fingerprint"]
            assert f"- `TOKENIZER_DIR`: the saved tokenizer with fingerprint `{fp}`" in card
        cmd = shlex.split(card.split("```bash\n")[1].split("\n")[0])
        out = tmp_path / name
        argv = [{"OUT": str(out), **subst}.get(a, a) for a in cmd[1:]]
        assert main(["-q", *argv, "--workers", "0"]) == 0
        rebuilt = out / "train" if name in ("mdmnist", "cub") else out
        assert load_manifest(rebuilt / "manifest.json")["digest"] == load_manifest(d / "manifest.json")["digest"]


NOTES = b"# my notes\n\nnot a t2i card\n"


@pytest.mark.parametrize("where, name, how", [
    (".", "README.md", "notes"),          # the build folder's card slot
    (".", "LICENSE.md", "notes"),         # its licence slot
    ("train", "README.md", "notes"),      # a split folder's card slot
    (".", "README.md", "folder"),
    (".", "README.md", "link"),
    (".", "README.md", "front matter without the t2i-data tag"),
])
def test_a_build_never_replaces_a_readme_or_licence_t2i_did_not_write(tmp_path, capsys, where, name, how):
    out = tmp_path / "md"
    (out / where).mkdir(parents=True)
    p = out / where / name
    if how == "notes":
        p.write_bytes(NOTES)
    elif how == "folder":
        p.mkdir()
    elif how == "link":
        (tmp_path / "elsewhere.md").write_bytes(NOTES)
        p.symlink_to(tmp_path / "elsewhere.md")
    else:
        p.write_bytes(b"---\ntags:\n- webdataset\n---\n# a dataset of mine\n")
    before = p.read_bytes() if p.is_file() else None
    assert main(["-q", "mdmnist", "build", "--out", str(out), "--train", "20", "--test", "10", "--shard-size", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"t2i: error: {p}: "), err
    assert ("did not write" in err) if how not in ("folder", "link") else (f"a {how}, where the build writes its {name}" in err)
    assert (p.read_bytes() if p.is_file() else None) == before
    assert not list(out.rglob("*.tar")), "nothing was built"


def test_a_rebuild_over_its_own_card_and_licence_goes_ahead(tmp_path):
    out = tmp_path / "md"
    argv = ["-q", "mdmnist", "build", "--out", str(out), "--train", "20", "--test", "10", "--shard-size", "10"]
    assert main(argv) == 0
    card, licence = (out / "README.md").read_bytes(), (out / "LICENSE.md").read_bytes()
    assert main(argv) == 0
    assert (out / "README.md").read_bytes() == card and (out / "LICENSE.md").read_bytes() == licence


def test_a_refused_split_leaves_the_earlier_splits_untouched(tmp_path, capsys):
    # mdmnist plans train, then test: the test folder's foreign README.md must stop the build before train loses a shard
    out = tmp_path / "md"
    argv = ["-q", "mdmnist", "build", "--out", str(out), "--train", "40", "--test", "10", "--shard-size", "10"]
    assert main(argv) == 0
    before = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    (out / "test" / "README.md").write_bytes(NOTES)
    assert main(argv[:-1] + ["20"]) == 2  # a new shard size: 2 of train's 4 shards would be stale
    assert "test/README.md: a README.md that t2i did not write" in capsys.readouterr().err
    (out / "test" / "README.md").write_bytes(before["test/README.md"])  # t2i's card back, to compare the rest
    after = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after.keys() == before.keys() and after == before


def test_a_card_whose_header_is_longer_than_64_kib_is_still_its_own(tmp_path):
    # the header lists every shard: a set of a few thousand shards has a header of hundreds of KiB
    from t2i_data.card import is_t2i_card

    header = "---\ntags:\n- webdataset\n- t2i-data\nconfigs:\n" + "".join(f"    - \"s-{i:06d}.tar\"\n" for i in range(20_000)) + "---\n# x\n"
    assert len(header) > 400_000
    (tmp_path / "README.md").write_text(header)
    assert is_t2i_card(tmp_path / "README.md")
    (tmp_path / "README.md").write_text(header.replace("- t2i-data\n", "- mine\n"))
    assert not is_t2i_card(tmp_path / "README.md")
