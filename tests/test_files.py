"""Crash-safe writes (id3pm.files): a full disk in the middle of a write leaves the
previous version intact and says so in one line. The real ENOSPC on a small tmpfs is in
tests/faults.py (make reliability); here the error is raised where the disk would."""

import errno

import pytest

from id3pm.files import DiskFullError, atomic_write_bytes, complete_folder, is_disk_full


def test_disk_full_is_recognised_from_the_os_and_from_safetensors():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert is_disk_full(DiskFullError("x.json: no space left on device; the file was not changed"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_full_disk_inside_a_folder_write_keeps_the_previous_folder(tmp_path):
    folder = tmp_path / "checkpoint"
    with complete_folder(folder, "a checkpoint") as tmp:
        (tmp / "state.json").write_text("1")
    with pytest.raises(DiskFullError) as e:
        with complete_folder(folder, "a checkpoint") as tmp:
            (tmp / "state.json").write_text("2")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == f"{folder}: no space left on device while writing a checkpoint; the previous one is intact"
    assert (folder / "state.json").read_text() == "1" and not (tmp_path / "checkpoint.tmp").exists()
    with pytest.raises(KeyError):  # any other error passes through unchanged, the old folder kept
        with complete_folder(folder, "a checkpoint"):
            raise KeyError("x")
    assert (folder / "state.json").read_text() == "1"
    with complete_folder(folder, "a checkpoint") as tmp:  # with space again: replaced
        (tmp / "state.json").write_text("3")
    assert (folder / "state.json").read_text() == "3" and not (tmp_path / "checkpoint.old").exists()


def test_a_full_disk_in_an_atomic_file_write_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "shard.parquet"
    atomic_write_bytes(path, b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("id3pm.files.os.fsync", full)
    with pytest.raises(DiskFullError, match="shard.parquet: no space left on device; the file was not changed"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]
