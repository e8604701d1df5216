"""Translated files kept for download (LibreTranslate's /translate_file then /download_file), bounded."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredFile:
    name: str
    content: bytes
    created: float


class FileStore:
    def __init__(self, max_files: int = 128, ttl_s: float = 1800.0) -> None:
        self.max_files, self.ttl_s = max_files, ttl_s
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, name: str, content: bytes) -> str:
        """Store under a fresh id; the oldest files leave first when full."""
        file_id = f"{uuid.uuid4().hex}.{name}"
        with self._lock:
            self._expire()
            self._files[file_id] = StoredFile(name, content, time.monotonic())
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
        return file_id

    def get(self, file_id: str) -> StoredFile | None:
        with self._lock:
            self._expire()
            return self._files.get(file_id)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        while self._files and next(iter(self._files.values())).created < cutoff:
            self._files.popitem(last=False)
