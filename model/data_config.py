"""What a model trains on: its languages and corpora, as the training config declares them.

    languages = ["en", "fr"]
    validation = "val"                 # the split whose NLL the trainer logs (default: the first [[heldout]])

    [[corpora]]                        # parallel text: `source` and `target` files, or one `tsv`
    [[monolingual]]                    # masked-LM sentences
    [[heldout]]                        # evaluation splits, kept out of all training data

Every check here runs before any sentence is read: unknown keys, wrong types, missing files,
line counts that differ, languages the model does not declare. Each error names the entry and
the key (`ConfigError`).
"""

from __future__ import annotations

import glob
import gzip
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# ISO 639 codes, optionally with a script or region subtag: en, fr, pt-BR, zh-Hans.
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DIRECTIONS = ("both", "forward")
SPLIT_SUFFIXES = ("dev", "test")


class ConfigError(ValueError):
    """A bad data declaration; the message names the section, the entry and the key."""

    def __init__(self, section: str, entry: str | None, key: str, problem: str) -> None:
        where = f"[[{section}]] {entry!r}" if entry is not None else section
        super().__init__(f"{where}, key {key!r}: {problem}")
        self.section, self.entry, self.key = section, entry, key


@dataclass(frozen=True)
class ParallelFiles:
    """A line-aligned pair of files, or one tab-separated file (source, target, ignored columns)."""

    source: str = ""
    target: str = ""
    tsv: str = ""


@dataclass(frozen=True)
class Corpus(ParallelFiles):
    name: str = ""
    langs: tuple[str, str] = ("", "")
    weight: float = 1.0  # expected copies of each pair per epoch: the corpora's shares follow n·weight
    directions: str = "both"
    heldout: int = 0  # sentences of source text in each of this corpus's dev and test splits

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The language pairs this corpus trains, as (source, target)."""
        src, tgt = self.langs
        return [(src, tgt), (tgt, src)] if self.directions == "both" else [(src, tgt)]


@dataclass(frozen=True)
class Monolingual:
    name: str
    files: tuple[str, ...]
    lang: str
    nsp: bool = False  # files are line-aligned descriptions of the same items: next-sentence pairs come from them


@dataclass(frozen=True)
class Heldout(ParallelFiles):
    name: str = ""
    langs: tuple[str, str] = ("", "")


@dataclass(frozen=True)
class DataConfig:
    languages: tuple[str, ...] = ()
    corpora: tuple[Corpus, ...] = ()
    monolingual: tuple[Monolingual, ...] = ()
    heldout: tuple[Heldout, ...] = ()
    validation: str = ""

    @property
    def directions(self) -> list[tuple[str, str]]:
        """Every (source, target) pair some corpus trains, in declaration order."""
        seen: dict[tuple[str, str], None] = {}
        for corpus in self.corpora:
            for pair in corpus.pairs:
                seen.setdefault(pair, None)
        return list(seen)

    @property
    def split_names(self) -> list[str]:
        """Names `mtserve eval --split` accepts: every [[heldout]], and each corpus's dev and test."""
        names = [h.name for h in self.heldout]
        names += [f"{c.name}-{s}" for c in self.corpora if c.heldout for s in SPLIT_SUFFIXES]
        return names

    def split_langs(self, split: str) -> tuple[str, str]:
        """The (source, target) languages of a named split."""
        for heldout in self.heldout:
            if heldout.name == split:
                return heldout.langs
        for corpus in self.corpora:
            if corpus.heldout and split in (f"{corpus.name}-{s}" for s in SPLIT_SUFFIXES):
                return corpus.langs
        raise ValueError(f"unknown split {split!r}; expected one of {self.split_names} or SRC,REF files")

    @property
    def validation_split(self) -> str:
        return self.validation or (self.split_names[0] if self.split_names else "")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["languages"] = list(self.languages)
        return out


_CORPUS_KEYS = {"name", "source", "target", "tsv", "langs", "weight", "directions", "heldout"}
_MONOLINGUAL_KEYS = {"name", "files", "lang", "nsp"}
_HELDOUT_KEYS = {"name", "source", "target", "tsv", "langs"}
TOP_LEVEL_KEYS = {"languages", "corpora", "monolingual", "heldout", "validation"}


def _want(value: Any, kind: type | tuple[type, ...], section: str, entry: str | None, key: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise ConfigError(section, entry, key, f"must be {what}, got {value!r}")
    return value


def _entry_name(raw: dict[str, Any], section: str, index: int, seen: set[str]) -> str:
    name = raw.get("name")
    if name is None:
        raise ConfigError(section, f"#{index + 1}", "name", "missing: every entry needs a name")
    _want(name, str, section, f"#{index + 1}", "name", "a string")
    if not NAME.fullmatch(name):
        raise ConfigError(section, name, "name", "use letters, digits, '.', '_' and '-'")
    if name in seen:
        raise ConfigError(section, name, "name", "used twice")
    seen.add(name)
    return name


def _unknown(raw: dict[str, Any], known: set[str], section: str, entry: str) -> None:
    for key in sorted(set(raw) - known):
        raise ConfigError(section, entry, key, f"unknown key; known keys: {sorted(known)}")


def _langs(raw: dict[str, Any], section: str, name: str, languages: tuple[str, ...]) -> tuple[str, str]:
    if "langs" not in raw:
        raise ConfigError(section, name, "langs", "missing: give the source and target languages")
    langs = raw["langs"]
    if not (isinstance(langs, list) and len(langs) == 2 and all(isinstance(x, str) for x in langs)):
        raise ConfigError(section, name, "langs", f"must be two language codes, got {langs!r}")
    if langs[0] == langs[1]:
        raise ConfigError(section, name, "langs", f"source and target are both {langs[0]!r}")
    for lang in langs:
        _check_language(lang, section, name, "langs", languages)
    return langs[0], langs[1]


def _check_language(lang: str, section: str, name: str, key: str, languages: tuple[str, ...]) -> None:
    if lang not in languages:
        raise ConfigError(section, name, key, f"language {lang!r} is not in languages {list(languages)}")


def _files(raw: dict[str, Any], section: str, name: str) -> ParallelFiles:
    has_pair = "source" in raw or "target" in raw
    if has_pair and "tsv" in raw:
        raise ConfigError(section, name, "tsv", "give either source/target or tsv, not both")
    if "tsv" in raw:
        return ParallelFiles(tsv=_want(raw["tsv"], str, section, name, "tsv", "a file path"))
    if not has_pair:
        raise ConfigError(section, name, "source", "missing: give source and target files, or one tsv file")
    for key in ("source", "target"):
        if key not in raw:
            raise ConfigError(section, name, key, "missing: source and target come together")
        _want(raw[key], str, section, name, key, "a file path")
    return ParallelFiles(source=raw["source"], target=raw["target"])


def parse_data_config(values: dict[str, Any]) -> DataConfig:
    """The data declaration from a TOML table's top-level keys; structure and types only."""
    languages = values.get("languages", [])
    if not (isinstance(languages, list) and all(isinstance(x, str) for x in languages)):
        raise ConfigError("languages", None, "languages", f"must be a list of language codes, got {languages!r}")
    for lang in languages:
        if not LANGUAGE_CODE.fullmatch(lang):
            raise ConfigError(
                "languages", None, "languages", f"{lang!r} is not a language code such as 'en' or 'pt-BR'"
            )
    if len(set(languages)) != len(languages):
        raise ConfigError("languages", None, "languages", f"lists a language twice: {languages}")
    langs = tuple(languages)

    def section(key: str) -> list[dict[str, Any]]:
        entries = values.get(key, [])
        if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            raise ConfigError(key, None, key, f"must be an array of tables ([[{key}]])")
        return entries

    seen: set[str] = set()
    corpora = []
    for i, raw in enumerate(section("corpora")):
        name = _entry_name(raw, "corpora", i, seen)
        _unknown(raw, _CORPUS_KEYS, "corpora", name)
        files = _files(raw, "corpora", name)
        weight = float(_want(raw.get("weight", 1.0), (int, float), "corpora", name, "weight", "a number"))
        if weight < 0:
            raise ConfigError("corpora", name, "weight", f"must be at least 0, got {weight}")
        directions = _want(raw.get("directions", "both"), str, "corpora", name, "directions", "a string")
        if directions not in DIRECTIONS:
            raise ConfigError("corpora", name, "directions", f"must be one of {list(DIRECTIONS)}, got {directions!r}")
        heldout = _want(raw.get("heldout", 0), int, "corpora", name, "heldout", "a whole number")
        if heldout < 0:
            raise ConfigError("corpora", name, "heldout", f"must be at least 0, got {heldout}")
        corpora.append(
            Corpus(**asdict(files), name=name, langs=_langs(raw, "corpora", name, langs), weight=weight,
                   directions=directions, heldout=heldout)
        )  # fmt: skip

    mono_names: set[str] = set()
    monolingual = []
    for i, raw in enumerate(section("monolingual")):
        name = _entry_name(raw, "monolingual", i, mono_names)
        _unknown(raw, _MONOLINGUAL_KEYS, "monolingual", name)
        patterns: Any = raw.get("files")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not (isinstance(patterns, list) and patterns and all(isinstance(f, str) for f in patterns)):
            raise ConfigError("monolingual", name, "files", f"must be a list of file paths or globs, got {patterns!r}")
        lang = _want(raw.get("lang"), str, "monolingual", name, "lang", "a language code")
        _check_language(lang, "monolingual", name, "lang", langs)
        nsp = _want(raw.get("nsp", False), bool, "monolingual", name, "nsp", "true or false")
        monolingual.append(Monolingual(name=name, files=tuple(patterns), lang=lang, nsp=nsp))

    heldout_names = {f"{c.name}-{s}" for c in corpora if c.heldout for s in SPLIT_SUFFIXES}
    heldouts = []
    for i, raw in enumerate(section("heldout")):
        name = _entry_name(raw, "heldout", i, heldout_names)
        _unknown(raw, _HELDOUT_KEYS, "heldout", name)
        files = _files(raw, "heldout", name)
        heldouts.append(Heldout(**asdict(files), name=name, langs=_langs(raw, "heldout", name, langs)))

    cfg = DataConfig(langs, tuple(corpora), tuple(monolingual), tuple(heldouts))
    validation = _want(values.get("validation", ""), str, "validation", None, "validation", "a split name")
    if validation and validation not in cfg.split_names:
        raise ConfigError("validation", None, "validation", f"{validation!r} is none of the splits {cfg.split_names}")
    return DataConfig(langs, tuple(corpora), tuple(monolingual), tuple(heldouts), validation)


def resolve(path: str, data_dir: Path) -> Path:
    """A path as the config gives it: absolute, or relative to the data directory."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else data_dir / candidate


def expand(pattern: str, data_dir: Path) -> list[Path]:
    """The files a glob names, sorted; a plain path names itself."""
    path = resolve(pattern, data_dir)
    if glob.has_magic(str(path)):
        return sorted(Path(p) for p in glob.glob(str(path)))
    return [path]


def open_text(path: Path) -> Iterator[str]:
    """Lines of a plain or gzip text file, without their line breaks."""
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def count_lines(path: Path) -> int:
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    opener: Any = gzip.open if gz else open
    count, last = 0, b"\n"
    with opener(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _check_parallel(entry: ParallelFiles, section: str, name: str, data_dir: Path) -> None:
    keys = ("tsv",) if entry.tsv else ("source", "target")
    for key in keys:
        path = resolve(getattr(entry, key), data_dir)
        if not path.is_file():
            raise ConfigError(section, name, key, f"file {path} not found")
    if not entry.tsv:
        counts = {key: count_lines(resolve(getattr(entry, key), data_dir)) for key in keys}
        if counts["source"] != counts["target"]:
            raise ConfigError(
                section, name, "target",
                f"{counts['target']} lines but source has {counts['source']}: the files are not line-aligned",
            )  # fmt: skip


def check_files(cfg: DataConfig, data_dir: Path) -> None:
    """Every declared file exists, every glob matches, and aligned files have equal line counts."""
    if not cfg.languages:
        raise ConfigError("languages", None, "languages", "missing: list the model's languages, e.g. ['en', 'fr']")
    if not cfg.corpora:
        raise ConfigError("corpora", None, "corpora", "no [[corpora]]: declare at least one parallel corpus")
    for corpus in cfg.corpora:
        _check_parallel(corpus, "corpora", corpus.name, data_dir)
    for mono in cfg.monolingual:
        for pattern in mono.files:
            found = expand(pattern, data_dir)
            if not found or not all(p.is_file() for p in found):
                raise ConfigError("monolingual", mono.name, "files", f"{resolve(pattern, data_dir)} matches no file")
    for held in cfg.heldout:
        _check_parallel(held, "heldout", held.name, data_dir)


def fingerprint(cfg: DataConfig, data_dir: Path) -> dict[str, Any]:
    """What prepared shards depend on: the declaration and each file's path, size and mtime."""
    paths: list[Path] = []
    for entry in (*cfg.corpora, *cfg.heldout):
        paths += [resolve(p, data_dir) for p in (entry.source, entry.target, entry.tsv) if p]
    for mono in cfg.monolingual:
        for pattern in mono.files:
            paths += expand(pattern, data_dir)
    files = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return {"data": cfg.to_dict(), "files": files}
