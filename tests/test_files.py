"""Translated files kept for download, by one server process or by several sharing a directory."""

from __future__ import annotations

import os
import time
from pathlib import Path

from service.api.files import FileStore


def test_a_file_one_process_stored_downloads_from_another(tmp_path: Path) -> None:
    writer, reader = FileStore(tmp_path, shared=True), FileStore(tmp_path, shared=True)
    file_id = writer.put("notes.fr.txt", b"Bonjour.")
    stored = reader.get(file_id)
    assert stored is not None and stored.name == "notes.fr.txt" and reader.read(stored) == b"Bonjour."
    assert reader.get("0" * 32 + ".notes.fr.txt") is None  # an id no process gave out
    assert reader.get("../" + file_id) is None and reader.get(f".{file_id}.partial") is None


def test_a_store_of_its_own_removes_an_earlier_runs_files_and_a_shared_one_does_not(tmp_path: Path) -> None:
    file_id = FileStore(tmp_path, shared=True).put("a.txt", b"a")
    FileStore(tmp_path, shared=True)  # another process starting beside the writer
    assert (tmp_path / file_id).is_file()
    FileStore(tmp_path)  # one process, restarted: its old ids resolve no more
    assert not (tmp_path / file_id).exists()


def test_shared_files_past_their_time_are_neither_served_nor_kept(tmp_path: Path) -> None:
    writer, reader = FileStore(tmp_path, ttl_s=60, shared=True), FileStore(tmp_path, ttl_s=60, shared=True)
    old = writer.put("old.txt", b"old")
    past = time.time() - 120
    os.utime(tmp_path / old, (past, past))
    assert reader.get(old) is None
    reader.put("new.txt", b"new")
    assert not (tmp_path / old).exists(), "a file past its time stayed on disk"
