"""Lookup tables mapped from a graph's data file, and what a batch's lookups left mapped.

onnxruntime maps each external initializer of a graph from its data file. A lookup table (the
data input of a Gather: the embedding, the positions) is read a row per token, so loading leaves
it on disk; a large batch maps every row its tokens read, and those pages stay counted in the
process until it exits (a model of opus-mt-en-fr's shape: 128 MB after 128 sentences with random
weights). `LookupPages.release` drops them with madvise(MADV_DONTNEED): the mapping stays, the
pages stay in the page cache, and the next lookup maps its rows again from there.

Only mappings that the graph's own sessions made are touched (recorded while they were created),
and they live as long as those sessions.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from service.runtime.libc import libc

log = logging.getLogger("mtserve.runtime")

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE
T = TypeVar("T")


@dataclass(frozen=True)
class FileRange:
    path: Path  # absolute, as /proc/self/maps names it
    offset: int
    length: int


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    offset: int  # of `start` in the file
    path: str


@functools.cache
def _model_proto() -> Any:
    """The few fields of ONNX's ModelProto that name initializers, their external data and their
    consumers (field numbers from onnx.proto; the rest of a graph is skipped as unknown fields)."""
    schema = descriptor_pb2.FileDescriptorProto(name="mtserve_onnx_lookups.proto", package="mtserve_onnx_lookups")
    string, repeated, optional = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    layout: dict[str, list[tuple[str, int, int, int, str]]] = {
        "Entry": [("key", 1, string, optional, ""), ("value", 2, string, optional, "")],
        "Tensor": [("name", 8, string, optional, ""), ("external_data", 13, message, repeated, "Entry")],
        "Node": [("input", 1, string, repeated, ""), ("op_type", 4, string, optional, "")],
        "Graph": [("node", 1, message, repeated, "Node"), ("initializer", 5, message, repeated, "Tensor")],
        "Model": [("graph", 7, message, optional, "Graph")],
    }
    for name, fields in layout.items():
        described = schema.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = described.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".mtserve_onnx_lookups.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mtserve_onnx_lookups.Model"))


def lookup_ranges(graph_path: Path) -> list[FileRange]:
    """Where in their data files the graph's lookup tables lie."""
    model = _model_proto()()
    model.ParseFromString(graph_path.read_bytes())
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather" and node.input}
    ranges = []
    for tensor in model.graph.initializer:
        if tensor.name not in tables or not tensor.external_data:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if "location" in entries and "length" in entries:
            path = (graph_path.parent / entries["location"]).resolve()
            ranges.append(FileRange(path, int(entries.get("offset", "0")), int(entries["length"])))
    return ranges


def _file_mappings(paths: set[str]) -> set[_Mapping]:
    """The mappings of these files in this process. /proc/self/maps lists every mapping (thousands
    with dozens of models loaded): searched as bytes, only the lines naming a path are split."""
    mappings: set[_Mapping] = set()
    try:
        with open("/proc/self/maps", "rb") as handle:
            data = handle.read()
    except OSError:  # not Linux
        return mappings
    for path in paths:
        needle = b" " + os.fsencode(path) + b"\n"
        at = data.find(needle)
        while at != -1:
            fields = data[data.rfind(b"\n", 0, at) + 1 : at].split()  # range, perms, offset, dev, inode
            start, end = (int(address, 16) for address in fields[0].split(b"-"))
            mappings.add(_Mapping(start, end, int(fields[2], 16), path))
            at = data.find(needle, at + 1)
    return mappings


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    function = getattr(libc(), "madvise", None)
    if function is None:
        return None
    function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int], int], function)


_path_locks: dict[str, threading.Lock] = {}
_path_locks_lock = threading.Lock()


class LookupPages:
    """The pages of one graph's lookup tables in the mappings its sessions made."""

    def __init__(self, regions: list[tuple[int, int]]) -> None:
        self._regions = regions  # [start, end) addresses, page-aligned

    def release(self) -> int:
        """Drop the mapped pages; the bytes of address space released."""
        madvise = _madvise()
        if madvise is None:
            return 0
        released = 0
        for start, end in self._regions:
            if madvise(start, end - start, _MADV_DONTNEED) == 0:
                released += end - start
        return released


def open_recording_lookups(graph_path: Path, open_sessions: Callable[[], T]) -> tuple[T, LookupPages]:
    """`open_sessions()` (which opens the graph's sessions), and the lookup pages of the mappings
    they made. Opens over the same data file are serialised, so that each records its own."""
    try:
        ranges = lookup_ranges(graph_path)
    except (OSError, ValueError) as exc:  # protobuf's DecodeError is a ValueError
        log.warning("cannot read the lookup tables of %s (%s): their pages stay mapped after batches", graph_path, exc)
        ranges = []
    paths = sorted({str(r.path) for r in ranges})
    with _path_locks_lock:
        locks = [_path_locks.setdefault(p, threading.Lock()) for p in paths]
    with contextlib.ExitStack() as held:
        for lock in locks:
            held.enter_context(lock)
        before = _file_mappings(set(paths))
        sessions = open_sessions()
        made = _file_mappings(set(paths)) - before
    return sessions, LookupPages(_regions(ranges, made))


def _regions(ranges: list[FileRange], mappings: set[_Mapping]) -> list[tuple[int, int]]:
    """The whole pages of each mapping that hold a lookup table."""
    regions = []
    for mapping in mappings:
        for table in ranges:
            if str(table.path) != mapping.path:
                continue
            mapped_end = mapping.offset + (mapping.end - mapping.start)
            first, last = max(table.offset, mapping.offset), min(table.offset + table.length, mapped_end)
            start = mapping.start + (first - mapping.offset)
            end = mapping.start + (last - mapping.offset)
            start, end = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE
            if end > start:
                regions.append((start, end))
    return sorted(regions)
