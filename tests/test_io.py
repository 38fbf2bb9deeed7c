"""Atomic writes: the target holds the old file or the complete new one, never a part."""

import os
import stat

import pytest

from audio_ssl.io import atomic_path, atomic_write_text, commit, create_temp


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("fsync", [True, False])
def test_file_appears_only_complete(tmp_path, fsync):
    target = tmp_path / "sub" / "out.txt"  # the folder does not exist yet
    with atomic_path(target, fsync=fsync) as tmp:
        assert tmp.parent == target.parent and tmp != target
        with open(tmp, "w") as f:
            f.write("first half ")
            f.flush()
            assert not target.exists()
            f.write("second half")
        assert not target.exists()
    assert target.read_text() == "first half second half"
    assert _leftovers(target.parent) == []


def test_failure_keeps_previous_content_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("new, but never finished")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert _leftovers(tmp_path) == []


def test_temp_in_another_folder(tmp_path):
    target, staging = tmp_path / "out" / "a.txt", tmp_path / "out" / ".tmp"
    with atomic_path(target, tmp_dir=staging) as tmp:
        assert tmp.parent == staging
        assert tmp.name.startswith(".a.txt.") and tmp.name.endswith(".tmp")
        tmp.write_text("data")
    assert target.read_text() == "data"
    assert list(staging.iterdir()) == []


def test_temp_names_are_unique(tmp_path):
    names = {create_temp(tmp_path / "a.txt") for _ in range(50)}
    assert len(names) == 50
    assert all(p.is_file() for p in names)


def test_create_temp_then_commit(tmp_path):
    target = tmp_path / "shard.bin"
    tmp = create_temp(target)
    with open(tmp, "wb") as f:  # written across many calls, then made final
        f.write(b"abc")
    assert not target.exists()
    commit(tmp, target)
    assert target.read_bytes() == b"abc" and not tmp.exists()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.txt", fsync=False) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640
