"""Tuple settings need a list: a bare string given where a list is needed is refused with one
line instead of being read as its characters (``config.type_problem``)."""
from __future__ import annotations

import pytest

from t2i_models.cli import main


@pytest.mark.parametrize("how", ["table", "override", "embed-layers"])
def test_a_string_where_a_list_is_needed_is_refused_not_read_as_characters(tmp_path, capsys, how):
    """``splits = "val2017"`` once became the splits v, a, l, 2, 0, 1, 7: every tuple setting
    (config.type_problem) now needs a list, from a pipeline table or a key=value override."""
    pipe = tmp_path / "p.toml"
    if how == "embed-layers":
        pipe.write_text(f'[embed]\nencoder = "{tmp_path}/bert"\nimages = "{tmp_path}/images"\nout = "{tmp_path}/e"\nlayers = "-1"\n')
        argv, setting = ["-q", "run", str(pipe), "--dry-run"], "layers"
    else:
        pipe.write_text(f'[preprocess]\ndataset = "coco"\nroot = "{tmp_path}"\nout = "{tmp_path}/o"\nsize = 32\n'
                        + ('splits = "val2017"\n' if how == "table" else ""))
        argv, setting = ["-q", "run", str(pipe), "--dry-run"] + (["preprocess.splits=val2017"] if how == "override" else []), "splits"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and setting in err and "needs a list" in err, err
