"""`mtserve data fetch` derives exactly the shared layout from what the public origins serve."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pytest

from model import fetch


def _origin(shared: Path) -> dict[str, bytes]:
    """What the origins serve: raw task-1 files, task-2 captions including val/test lines, a 3-column zip."""
    served: dict[str, bytes] = {}
    for rel in fetch.MULTI30K_SHA256:
        served[f"{fetch.MULTI30K_URL}/{rel}"] = (shared / "multi30k" / Path(rel).name).read_bytes()
    held = gzip.decompress((shared / "multi30k/val.en.gz").read_bytes()).splitlines(keepends=True)[:3]
    for i in fetch.CAPTIONS_SHA256:
        text = gzip.decompress((shared / f"multi30k/captions-en/train.{i}.en.gz").read_bytes())
        served[f"{fetch.MULTI30K_URL}/task2/raw/train.{i}.en.gz"] = gzip.compress(b"".join(held) + text)
    rows = gzip.decompress((shared / "tatoeba/eng-fra.tsv.gz").read_bytes()).splitlines()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fra.txt", b"".join(r + b"\tCC-BY 2.0 (France) Attribution: tatoeba.org\n" for r in rows))
    served[fetch.TATOEBA_URL] = archive.getvalue()
    return served


def test_fetch_reproduces_the_shared_layout(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _origin(shared_data)
    monkeypatch.setattr(fetch, "_download", lambda url: served[url])
    fetch.fetch_all(tmp_path)
    for rel in [*(f"multi30k/{Path(r).name}" for r in fetch.MULTI30K_SHA256),
                *(f"multi30k/captions-en/train.{i}.en.gz" for i in fetch.CAPTIONS_SHA256),
                "tatoeba/eng-fra.tsv.gz"]:  # fmt: skip
        assert gzip.decompress((tmp_path / rel).read_bytes()) == gzip.decompress((shared_data / rel).read_bytes()), rel
    assert (tmp_path / "FETCHED.json").is_file()


def test_fetch_rejects_a_changed_file(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _origin(shared_data)
    url = f"{fetch.MULTI30K_URL}/task1/raw/val.fr.gz"
    served[url] = gzip.compress(gzip.decompress(served[url]) + b"extra line\n")
    monkeypatch.setattr(fetch, "_download", lambda u: served[u])
    with pytest.raises(fetch.ChecksumError, match=r"val\.fr\.gz"):
        fetch.fetch_all(tmp_path)
