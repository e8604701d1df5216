"""Lookup tables: found where onnx itself finds them, and the rows a batch mapped given back to the file
once the model idles, with translations unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.manifest import DEFAULT_MODEL_DIR
from service.runtime.beam import DecodeOptions
from service.runtime.lookups import FileRange, lookup_ranges
from service.runtime.translator import Translator

SENTENCES = ["A man is riding a bicycle down the street.", "Two dogs play in the snow."]


def _onnx_lookup_ranges(graph: Path) -> list[FileRange]:
    model = onnx.load(str(graph), load_external_data=False)
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    ranges = []
    for tensor in model.graph.initializer:
        if tensor.name in tables and tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            path = (graph.parent / entries["location"]).resolve()
            ranges.append(FileRange(path, int(entries.get("offset", "0")), int(entries["length"])))
    return ranges


@pytest.mark.parametrize("graph", ["encoder.onnx", "decoder_step.onnx"])
def test_lookup_tables_are_where_onnx_finds_them(graph: str, tmp_path: Path) -> None:
    translator = Translator.load(DEFAULT_MODEL_DIR, 1, packed=tmp_path)
    manifest = translator.model.manifest
    (packed,) = tmp_path.glob(f"*/{graph}")
    for path in (DEFAULT_MODEL_DIR / graph, packed):
        assert lookup_ranges(path) == _onnx_lookup_ranges(path)
    # As exported, the committed embedding is fp16 behind a Cast that onnxruntime folds onto the heap;
    # the packed copy holds the folded fp32 table, mapped from its data file.
    embedding = manifest.vocab_size * manifest.d_model * 4
    assert embedding in [r.length for r in lookup_ranges(packed)]


def _resident_kb(regions: list[tuple[int, int]]) -> int:
    """Resident kB of the mappings that hold these address regions (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            start, end = (int(a, 16) for a in line.split()[0].split("-"))
            inside = any(start < r_end and r_start < end for r_start, r_end in regions)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def test_rows_a_batch_looked_up_go_back_to_the_file(tmp_path: Path) -> None:
    translator = Translator.load(DEFAULT_MODEL_DIR, 2, packed=tmp_path)
    model = translator.model
    options = DecodeOptions(beam_size=5)
    before = [t[0].text for t in translator.translate(SENTENCES, "fr", options)]
    regions = model.encoder._lookups._regions
    assert regions, "the encoder's embedding mapping was not found"
    vocab = model.manifest.vocab_size
    ids = np.arange(vocab, dtype=np.int64).reshape(-1, 50)  # every row of the embedding, looked up
    model.encode(ids, np.ones_like(ids))
    table_kb = vocab * model.manifest.d_model * 4 // 1024
    looked_up = _resident_kb(regions)
    assert looked_up >= table_kb * 0.9, f"{looked_up} kB mapped of a {table_kb} kB table"
    assert model.release_arena()
    released = _resident_kb(regions)
    assert released <= table_kb * 0.05, f"{released} kB of the {table_kb} kB table still mapped after release"
    assert [t[0].text for t in translator.translate(SENTENCES, "fr", options)] == before
