"""`mtserve data fetch`: download the training data from its public origins.

Multi30k comes from a pinned commit of github.com/multi30k/dataset and is checked
against the sha256 of each file's uncompressed text. Tatoeba comes from
manythings.org's current export, which changes over time: its checksum is
recorded, not checked. The result has the layout `model.corpus` reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("mtserve.fetch")

MULTI30K_COMMIT = "c60773c2a3db82db0e05655b3d01cf391e810800"
MULTI30K_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{MULTI30K_COMMIT}/data"
TATOEBA_URL = "https://www.manythings.org/anki/fra-eng.zip"

# sha256 of the uncompressed text, as the training code reads it.
MULTI30K_SHA256 = {
    "task1/raw/train.en.gz": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "task1/raw/train.fr.gz": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "task1/raw/val.en.gz": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "task1/raw/val.fr.gz": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "task1/raw/test_2016_flickr.en.gz": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "task1/raw/test_2016_flickr.fr.gz": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
}
# The captions after removing lines that equal a val or test2016 sentence.
CAPTIONS_SHA256 = {
    1: "636e949e8a5ae49bf4643e5566cd5400359328003937db2840d0910d85a820d8",
    2: "faf00eff5d8c6eb96a31fd4118d2d9c599d587cc71fb4d1e0ede1b3dcb2f13bb",
    3: "03b7594e8a2145e2178d07342b776d006a8722aca298b415c4cb465afe217ed4",
    4: "a42cf07aaa7ec3ff79afd2683bc5f1729952d3fd3c853b400e434a958246f58e",
    5: "7d12862babc66a597eacc1b1b00c927c2f22e12140a92595526457d6156da027",
}


class ChecksumError(RuntimeError):
    pass


def _download(url: str) -> bytes:
    log.info("downloading %s", url)
    request = urllib.request.Request(url, headers={"User-Agent": "mtserve-data-fetch"})
    with urllib.request.urlopen(request, timeout=120) as response:
        data: bytes = response.read()
    return data


def _check(name: str, text: bytes, expected: str) -> None:
    got = hashlib.sha256(text).hexdigest()
    if got != expected:
        raise ChecksumError(f"{name}: sha256 {got}, expected {expected}")


def _write_gz(path: Path, text: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as handle:
        handle.write(text)


def fetch_multi30k(out: Path) -> None:
    held_out: set[bytes] = set()
    for rel, sha in MULTI30K_SHA256.items():
        text = gzip.decompress(_download(f"{MULTI30K_URL}/{rel}"))
        _check(rel, text, sha)
        _write_gz(out / "multi30k" / Path(rel).name, text)
        if rel.endswith(".en.gz") and "train" not in rel:
            held_out |= set(text.splitlines())
    for i, sha in CAPTIONS_SHA256.items():
        rel = f"task2/raw/train.{i}.en.gz"
        lines = gzip.decompress(_download(f"{MULTI30K_URL}/{rel}")).splitlines(keepends=True)
        text = b"".join(line for line in lines if line.rstrip(b"\n") not in held_out)
        _check(rel + " (val/test lines removed)", text, sha)
        _write_gz(out / "multi30k" / "captions-en" / f"train.{i}.en.gz", text)


def fetch_tatoeba(out: Path) -> dict[str, str]:
    archive = _download(TATOEBA_URL)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        raw = zf.read("fra.txt")
    # fra.txt: english<TAB>french[<TAB>attribution]; keep the first two columns.
    rows = (line.split(b"\t") for line in raw.splitlines())
    text = b"".join(r[0] + b"\t" + r[1] + b"\n" for r in rows if len(r) >= 2)
    _write_gz(out / "tatoeba" / "eng-fra.tsv.gz", text)
    return {
        "url": TATOEBA_URL,
        "zip_sha256": hashlib.sha256(archive).hexdigest(),
        "tsv_sha256": hashlib.sha256(text).hexdigest(),
        "fetched": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def fetch_all(out: Path) -> None:
    fetch_multi30k(out)
    record = {"multi30k_commit": MULTI30K_COMMIT, "tatoeba": fetch_tatoeba(out)}
    (out / "FETCHED.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("data written to %s; Tatoeba checksum recorded in FETCHED.json", out)
