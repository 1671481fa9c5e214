"""Writing whole or not at all: a staged folder replaces its target only when it is complete."""

import os

import pytest

from geotrainr.files import staged_folder


def test_staged_folder_replaces_on_success_and_leaves_the_old_one_on_failure(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with staged_folder(out) as tmp:
        (tmp / "new.txt").write_text("whole")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing staged is left behind
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # an ordinary folder, not mkdtemp's private one
