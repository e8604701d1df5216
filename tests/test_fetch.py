"""`mtserve data fetch` derives exactly the shared layout from what the public origins serve."""

from __future__ import annotations

import gzip
import io
import json
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
    for name, (stem, _, _) in fetch.NEWS_SETS.items():
        for suffix, lang in ((".eng", "en"), (".fra", "fr")):
            served[f"{fetch.NEWS_URL}/{stem}{suffix}"] = gzip.decompress(
                (shared / f"news/{name}.{lang}.gz").read_bytes()
            )
    served.update(_coco_origin(shared))
    return served


def _coco_origin(shared: Path) -> dict[str, bytes]:
    """COCO's annotation JSON as the archive holds it (captions with stray whitespace, images in
    an arbitrary order), plus captions of two Multi30k test images that the fetch must drop."""
    rows = [line.split("\t", 1) for line in gzip.decompress((shared / "coco/captions_val2017.en.gz").read_bytes())
            .decode().splitlines()]  # fmt: skip
    groups: dict[int, list[dict[str, object]]] = {}
    for n, (image, caption) in enumerate(rows):
        groups.setdefault(int(image), []).append({"image_id": int(image), "id": n, "caption": caption + " \n"})
    annotations = [a for image in reversed(groups) for a in groups[image]]
    annotations += [{"image_id": 398076, "id": 10**6, "caption": "A test image."},
                    {"image_id": 117071, "id": 10**6 + 1, "caption": "Another one."}]  # fmt: skip
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(fetch.COCO_MEMBER, json.dumps({"images": [], "annotations": annotations}))
    split = b"COCO_train2014_000000117071.jpg#367178\nCOCO_val2014_000000398076.jpg#657409\n"
    return {fetch.COCO_URL: archive.getvalue(), fetch.COCO_TEST_SPLIT: split}


def test_fetch_reproduces_the_shared_layout(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _origin(shared_data)
    monkeypatch.setattr(fetch, "_download", lambda url: served[url])
    fetch.fetch_all(tmp_path)
    for rel in [*(f"multi30k/{Path(r).name}" for r in fetch.MULTI30K_SHA256),
                *(f"multi30k/captions-en/train.{i}.en.gz" for i in fetch.CAPTIONS_SHA256),
                *(f"news/{name}.{lang}.gz" for name in fetch.NEWS_SETS for lang in ("en", "fr")),
                "tatoeba/eng-fra.tsv.gz", "coco/captions_val2017.en.gz"]:  # fmt: skip
        assert gzip.decompress((tmp_path / rel).read_bytes()) == gzip.decompress((shared_data / rel).read_bytes()), rel
    record = json.loads((tmp_path / "FETCHED.json").read_text())
    assert record["coco"]["matches_reference"] == "true"


def test_fetch_rejects_a_changed_file(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = _origin(shared_data)
    url = f"{fetch.MULTI30K_URL}/task1/raw/val.fr.gz"
    served[url] = gzip.compress(gzip.decompress(served[url]) + b"extra line\n")
    monkeypatch.setattr(fetch, "_download", lambda u: served[u])
    with pytest.raises(fetch.ChecksumError, match=r"val\.fr\.gz"):
        fetch.fetch_all(tmp_path)
