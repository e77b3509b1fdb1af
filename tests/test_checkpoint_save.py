"""Checkpoint writes that fail (a full disk) or follow a failed one."""
import errno

import pytest
import torch

from t2i_data.errors import T2IError
from t2i_models.checkpoint import load_checkpoint_dict, save_checkpoint
from t2i_models.prior_builders import g1_tiny


def test_a_full_disk_gives_one_message_leaves_no_partial_and_the_retry_works(tmp_path, monkeypatch):
    model = g1_tiny()
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, "t2i-prior/1", step=1)
    real_save = torch.save

    def full_disk(obj, f):
        f.write(b"\0" * 4096)  # part of the file written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(T2IError, match=rf"{path}: could not write the checkpoint \(\[Errno 28\] No space left on device; [\d,]+ bytes "
                                       r"free there\); the previous last.pt is unchanged"):
        save_checkpoint(path, model, "t2i-prior/1", step=2)
    assert not (tmp_path / "last.pt.partial").exists()
    assert load_checkpoint_dict(path)["step"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    save_checkpoint(path, model, "t2i-prior/1", step=2)
    assert load_checkpoint_dict(path)["step"] == 2


def test_a_leftover_partial_from_an_interrupted_save_is_replaced(tmp_path):
    (tmp_path / "last.pt.partial").write_bytes(b"\1" * (1 << 20))  # e.g. killed during torch.save
    save_checkpoint(tmp_path / "last.pt", g1_tiny(), "t2i-prior/1", step=3)
    assert not (tmp_path / "last.pt.partial").exists() and load_checkpoint_dict(tmp_path / "last.pt")["step"] == 3
    (tmp_path / "blocked.pt.partial").mkdir()  # not removable as a file: one message, no traceback
    (tmp_path / "blocked.pt.partial" / "x").write_text("x")
    with pytest.raises(T2IError, match=r"blocked.pt: could not write the checkpoint .*no blocked.pt was written"):
        save_checkpoint(tmp_path / "blocked.pt", g1_tiny(), "t2i-prior/1", step=3)
