"""Checks on a ZIP-based document before any library opens it: bombs, traversal, encryption."""

from __future__ import annotations

import io
import posixpath
import zipfile

from service.api.formats.errors import DocumentError

# What the entries of one document may unpack to, declared sizes summed. zipfile never reads an
# entry past its declared size, so this bounds the memory a crafted archive can claim.
MAX_UNPACKED_BYTES = 256 << 20
# Text and XML compress 5 to 20 times; a run of zeros compresses about 1,000 times.
MAX_RATIO = 200
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a password-protected OOXML file is an OLE container


def open_archive(raw: bytes, kind: str) -> zipfile.ZipFile:
    if raw.startswith(_OLE_MAGIC):
        raise DocumentError(f"file is encrypted (password-protected) or a legacy binary format, not a {kind}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DocumentError(f"file is not a valid {kind}: not a ZIP package ({exc})") from None
    unpacked = 0
    for entry in entries:
        name = entry.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (parts[0].endswith(":") and len(parts[0]) == 2):
            raise DocumentError(f"file has an entry with an unsafe path ({name!r})")
        if entry.flag_bits & 0x1:
            raise DocumentError(f"file is encrypted (entry {name!r})")
        unpacked += entry.file_size
        if entry.file_size > (1 << 20) and entry.file_size > MAX_RATIO * max(1, entry.compress_size):
            raise DocumentError(
                f"file entry {name!r} unpacks to {entry.file_size} bytes from {entry.compress_size}: "
                f"over the compression ratio a document may have ({MAX_RATIO}), refused as a ZIP bomb"
            )
    if unpacked > MAX_UNPACKED_BYTES:
        raise DocumentError(
            f"file unpacks to {unpacked} bytes, over the {MAX_UNPACKED_BYTES} a document may hold: "
            "refused as a ZIP bomb"
        )
    return archive


def inside(base: str, href: str) -> str:
    """`href` resolved against the folder `base`; a DocumentError when it leaves the package."""
    path = posixpath.normpath(posixpath.join(base, href))
    if path.startswith(("../", "/")) or path == "..":
        raise DocumentError(f"file refers to a path outside the package ({href!r})")
    return path
