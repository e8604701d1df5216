"""`mtserve data fetch`: download the shared data from its public origins.

Multi30k (English, French, German, Czech) comes from a pinned commit of
github.com/multi30k/dataset, the WMT news sets from a pinned commit of
github.com/Helsinki-NLP/OPUS-MT-testsets; both are checked against the sha256 of each
file's uncompressed text. Tatoeba comes from manythings.org's current export, which
changes over time: its checksum is recorded, not checked. The COCO 2017 validation
captions come from the COCO annotations archive, less the images of Multi30k's
test_2017_mscoco split; their text's checksum is compared with the reference copy's and
recorded. The result is the layout configs/default.toml declares.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("mtserve.fetch")

MULTI30K_COMMIT = "c60773c2a3db82db0e05655b3d01cf391e810800"
MULTI30K_URL = f"https://raw.githubusercontent.com/multi30k/dataset/{MULTI30K_COMMIT}/data"
TATOEBA_URL = "https://www.manythings.org/anki/fra-eng.zip"
NEWS_COMMIT = "a35942bf0fbf19e0c185030e358ea5368a5a2d6f"
NEWS_URL = f"https://raw.githubusercontent.com/Helsinki-NLP/OPUS-MT-testsets/{NEWS_COMMIT}/testsets/eng-fra"
COCO_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
COCO_MEMBER = "annotations/captions_val2017.json"
COCO_TEST_SPLIT = f"{MULTI30K_URL}/task1/image_splits/test_2017_mscoco.txt"

# sha256 of the uncompressed text, as the training code reads it.
MULTI30K_SHA256 = {
    "task1/raw/train.en.gz": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "task1/raw/train.fr.gz": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "task1/raw/val.en.gz": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "task1/raw/val.fr.gz": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
    "task1/raw/test_2016_flickr.en.gz": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "task1/raw/test_2016_flickr.fr.gz": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "task1/raw/train.de.gz": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "task1/raw/train.cs.gz": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "task1/raw/val.de.gz": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "task1/raw/val.cs.gz": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "task1/raw/test_2016_flickr.de.gz": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "task1/raw/test_2016_flickr.cs.gz": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
}
# Our name -> (the set's file stem in OPUS-MT-testsets, sha256 of the English text, of the French).
NEWS_SETS = {
    "news-test2008": ("news-test2008", "134e1140848bb0d05e774dbe35b8b69602faf401250c03dbb437bdbe38c37b6f",
                      "e212f59bb002d73a1bfebdcf101a6c51db3ccfd8a3115cc8a18414b6ee2a28f9"),
    "newssyscomb2009": ("newssyscomb2009", "b734a44294fa3b23a2491cd9a2c59fb5eb71332ace70b2c9039978863dd0e43d",
                        "bf74d7a28aa72aa79cbff02bec00a14983f65616dd37ee53e17a37e9d933505e"),
    "newstest2009": ("newstest2009", "3fc92718e7b994ca0a5dc57e63b68d5c80244a56e5bb1cec11d2e8dd10b3ff3c",
                     "0ca4995d1dff341488287e1f9d4230073a20bc6e43e268ebf5e7b476f526c07d"),
    "newstest2010": ("newstest2010", "1ebece77e333965cbc66fde735a6f17e026b4d6690f4f7fdaba839b7bdadac3b",
                     "131ee7deb0ea517bdd6a85ca5f6f5ca3136c5f76daba426ef4dde3d60b9e66a9"),
    "newstest2011": ("newstest2011", "d387569743c0fa9097df4d4e2c1dd9e6ba9ef3cee6e0f473da3204c887dcf8fd",
                     "9631ea545acf4b921add6baba856b03efae9f0de4c330a314091b3f925506c7f"),
    "newstest2012": ("newstest2012", "f9e51f85c4948033fc7d77ef427f4d88908a8dd3f778970f62d0baafac3ff97e",
                     "29aa5aff172127f6adf5625cc2f8e44f579d524700e84f1ec0eb14f4f19719e4"),
    "newstest2013": ("newstest2013", "ace268a1d9724ca76f6d8e5c720ffdc08f01bdce45630ed8b269dc7918e1c16e",
                     "909b63be5df3eb8c13e1d5967bf3f0adfdb9f6ed5e638c5bffff563ee2ff7f41"),
    "newsdiscusstest2015": ("newsdiscusstest2015-enfr",
                            "7527c3cde95379afdba3a13bab4aac237aceabc1d2f1ed2c31971e1be672266a",
                            "8e38ea9cf6fb7f543e6a3e17ab3b377bec11248e76be55a88d6d7d9ed340430e"),
}  # fmt: skip
# The reference copy's COCO text (`image_id<TAB>caption`, by image id, annotation order within one).
COCO_SHA256 = "77ca0fb3187801bd6595f6cd1ecd5d49893818a72f4f456973e6799a7b92806d"
COCO_IMAGE = re.compile(rb"COCO_(?:train|val)2014_0*(\d+)\.jpg")
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
        if rel.endswith(".en.gz") and "train" not in rel:  # the captions' val/test filter
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


def fetch_news(out: Path) -> None:
    for name, (stem, en_sha, fr_sha) in NEWS_SETS.items():
        for suffix, lang, sha in ((".eng", "en", en_sha), (".fra", "fr", fr_sha)):
            text = _download(f"{NEWS_URL}/{stem}{suffix}")
            _check(f"{stem}{suffix}", text, sha)
            _write_gz(out / "news" / f"{name}.{lang}.gz", text)


def coco_captions(annotations: bytes, test_split: bytes) -> bytes:
    """`image_id<TAB>caption` lines of the COCO captions, without the images Multi30k tests on."""
    removed = {int(m) for m in COCO_IMAGE.findall(test_split)}
    rows = json.loads(annotations)["annotations"]
    kept = sorted((r for r in rows if r["image_id"] not in removed), key=lambda r: r["image_id"])  # stable
    return "".join(f"{r['image_id']}\t{' '.join(r['caption'].split())}\n" for r in kept).encode("utf-8")


def fetch_coco(out: Path) -> dict[str, str]:
    archive = _download(COCO_URL)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        annotations = zf.read(COCO_MEMBER)
    text = coco_captions(annotations, _download(COCO_TEST_SPLIT))
    got = hashlib.sha256(text).hexdigest()
    if got != COCO_SHA256:
        log.warning("COCO captions: sha256 %s differs from the reference copy's %s", got, COCO_SHA256)
    _write_gz(out / "coco" / "captions_val2017.en.gz", text)
    return {"url": COCO_URL, "zip_sha256": hashlib.sha256(archive).hexdigest(), "text_sha256": got,
            "matches_reference": str(got == COCO_SHA256).lower()}  # fmt: skip


def fetch_all(out: Path) -> None:
    fetch_multi30k(out)
    fetch_news(out)
    record = {"multi30k_commit": MULTI30K_COMMIT, "news_commit": NEWS_COMMIT, "tatoeba": fetch_tatoeba(out),
              "coco": fetch_coco(out)}  # fmt: skip
    (out / "FETCHED.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("data written to %s; Tatoeba checksum recorded in FETCHED.json", out)
