"""Translated files kept for download (LibreTranslate's /translate_file then /download_file), on disk,
bounded in number and age.

A file is written beside its final name and renamed into place only once it is whole, so a full
disk or a directory that refuses writes leaves nothing behind and fails with a FilesDirError
that names the directory: 507 when there is no space, 503 when it cannot be written at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Below this much free space the directory reports itself full: a translated document may not fit.
LOW_SPACE_BYTES = 1 << 20
PARTIAL_SUFFIX = ".partial"
MAX_STORED_FILES = 128  # translated files kept for download, by the whole service
_OWN_NAME = re.compile(r"^\.?[0-9a-f]{32}\..+")  # what put() writes: <uuid hex>.<name>, or its partial
_FINISHED_NAME = re.compile(r"[0-9a-f]{32}\.[^/\\]+")  # a whole file's id, as put() returns it
FilesDirState = Literal["ok", "full", "unwritable", "missing"]


class FilesDirError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class StoredFile:
    name: str
    path: Path
    created: float


@dataclass(frozen=True)
class FilesDirHealth:
    directory: str
    state: FilesDirState
    free_bytes: int | None


class FileStore:
    def __init__(
        self,
        directory: Path | None = None,
        max_files: int = MAX_STORED_FILES,
        ttl_s: float = 1800.0,
        shared: bool = False,
    ) -> None:
        """`shared`: the server's other processes keep their files in the same directory, which the
        parent process emptied before they started; a file another process wrote is found on disk."""
        self.max_files, self.ttl_s = max_files, ttl_s
        self._owned = directory is None  # a temporary directory of our own, removed by close()
        self.directory = Path(tempfile.mkdtemp(prefix="mtserve-files-")) if directory is None else directory
        self.shared = shared and not self._owned
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._lock = threading.Lock()
        self._last_error: FilesDirState | None = None  # from the last write, until one succeeds
        self._swept = float("-inf")  # a process's first file sweeps what a dead one left
        if not self._owned:
            with contextlib.suppress(OSError):  # health() and put() report the directory's state
                self.directory.mkdir(parents=True, exist_ok=True)
            if not self.shared:
                remove_leftovers(self.directory)

    def put(self, name: str, content: bytes) -> str:
        """Write under a fresh id; the oldest files leave first when full. Raises FilesDirError."""
        file_id = f"{uuid.uuid4().hex}.{name}"
        final = self.directory / file_id
        partial = self.directory / f".{file_id}{PARTIAL_SUFFIX}"
        try:
            with open(partial, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())  # a file system that allocates late reports no space here
            os.replace(partial, final)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            full = exc.errno in NO_SPACE
            self._last_error = "full" if full else "unwritable"
            why = "no space left" if full else (exc.strerror or str(exc))
            raise FilesDirError(
                507 if full else 503,
                f"Cannot store the translated file: the files directory {self.directory} (MTSERVE_FILES_DIR): {why}",
            ) from None
        self._last_error = None
        with self._lock:
            self._files[file_id] = StoredFile(name, final, time.monotonic())
            leaving = self._expired()
            while len(self._files) > self.max_files:
                leaving.append(self._files.popitem(last=False)[1])
        self._remove(leaving)
        if self.shared:
            self._sweep_expired()
        return file_id

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            leaving = self._expired()
            stored = self._files.get(file_id)
        self._remove(leaving)
        if stored is None and self.shared:
            return self._written_elsewhere(file_id)
        return stored

    def read(self, stored: StoredFile) -> bytes | None:
        """The file's bytes; None if it left meanwhile."""
        try:
            return stored.path.read_bytes()
        except FileNotFoundError:
            return None

    def health(self) -> FilesDirHealth:
        directory = self.directory
        if not directory.is_dir():
            return FilesDirHealth(str(directory), "missing", None)
        stats = os.statvfs(directory)
        free = stats.f_bavail * stats.f_frsize
        state: FilesDirState = "ok"
        if self._last_error == "unwritable" or not os.access(directory, os.W_OK | os.X_OK):
            state = "unwritable"
        elif self._last_error == "full" or free < LOW_SPACE_BYTES:
            state = "full"
        return FilesDirHealth(str(directory), state, free)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _expired(self) -> list[StoredFile]:
        """Take the files past their time out of the index (under the lock); the caller removes them."""
        cutoff = time.monotonic() - self.ttl_s
        gone = []
        while self._files and next(iter(self._files.values())).created < cutoff:
            gone.append(self._files.popitem(last=False)[1])
        return gone

    @staticmethod
    def _remove(files: list[StoredFile]) -> None:
        for stored in files:
            stored.path.unlink(missing_ok=True)

    def _written_elsewhere(self, file_id: str) -> StoredFile | None:
        """A file another process of the server wrote, while it is younger than the files' time out."""
        if not _FINISHED_NAME.fullmatch(file_id):
            return None
        path = self.directory / file_id
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if age >= self.ttl_s:
            return None
        return StoredFile(file_id.split(".", 1)[1], path, time.monotonic() - age)

    def _sweep_expired(self) -> None:
        """Remove every process's files past their time out, at most ten times a time out: a process
        that died leaves its files behind, and no other process has them in its index."""
        now = time.monotonic()
        if now - self._swept < self.ttl_s / 10:
            return
        self._swept = now
        cutoff = time.time() - self.ttl_s
        with contextlib.suppress(OSError):
            for path in self.directory.iterdir():
                with contextlib.suppress(OSError):
                    if _FINISHED_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
                        path.unlink(missing_ok=True)


def remove_leftovers(directory: Path) -> None:
    """A given directory may hold files of an earlier run, whose ids no longer resolve."""
    with contextlib.suppress(OSError):  # health() and put() report the directory's state
        for path in directory.iterdir():
            if path.is_file() and _OWN_NAME.match(path.name):
                path.unlink(missing_ok=True)
