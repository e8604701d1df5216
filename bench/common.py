"""What the runtime benchmarks share: their command-line options, the test2016 sentences, one
translator per model directory given, and batches decoded one after another or side by side."""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import json
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from model import corpus
from model.data_config import DataConfig
from model.train_config import load_config
from service.manifest import DEFAULT_MODEL_DIR, sha256_file
from service.runtime.beam import DecodeOptions, Hypothesis
from service.runtime.translator import Translator

Decode = Callable[[list[list[int]]], list[list[int]]]  # one batch of source ids -> each one's best target ids
DecodeAll = Callable[[list[list[list[int]]]], list[list[list[int]]]]  # every batch -> each one's outputs


# What an exported or converted model in a benchmark's work directory is made by: the checkpoint's
# files and the code that writes graphs or converts them.
MAKERS = ("export", "model", "service/graphs.py", "bench/ct2_convert.py")
MADE_FROM_FILE = "made_from.txt"


@functools.cache
def makers_digest(checkpoint: Path) -> str:
    """A digest of the checkpoint's files and of MAKERS' code: read once a process, whatever the options."""
    root = Path(__file__).resolve().parent.parent
    sources = sorted(f for maker in MAKERS for f in ((root / maker).rglob("*.py") if (root / maker).is_dir()
                                                     else [root / maker]))  # fmt: skip
    files = [*sources, *sorted(f for f in checkpoint.iterdir() if f.is_file())]
    return hashlib.sha256("".join(f"{path.name} {sha256_file(path)}\n" for path in files).encode()).hexdigest()


def made_from(checkpoint: Path, *options: object) -> str:
    """A digest of what a model made from `checkpoint` with `options` depends on (MAKERS)."""
    return hashlib.sha256(f"{makers_digest(checkpoint)} {options!r}".encode()).hexdigest()


def reusable(directory: Path, digest: str, marker: str) -> bool:
    """Whether `directory` holds a model (its file `marker`) made from `digest` (made_from); one made
    from anything else is removed, so that code changed since a run is never measured stale."""
    stamp = directory / MADE_FROM_FILE
    if (directory / marker).is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return True
    shutil.rmtree(directory, ignore_errors=True)
    return False


def mark_made(directory: Path, digest: str) -> None:
    (directory / MADE_FROM_FILE).write_text(digest + "\n")


def in_streams(decode: Decode, streams: int) -> DecodeAll:
    """Every batch through `decode`, `streams` batches at a time from as many threads (1: in turn).
    CTranslate2 runs concurrent calls on as many replicas as its `inter_threads`."""

    def decode_all(batches: list[list[list[int]]]) -> list[list[list[int]]]:
        if streams <= 1:
            return [decode(batch) for batch in batches]
        with ThreadPoolExecutor(streams) as pool:
            return list(pool.map(decode, batches))

    return decode_all


def median_ms(work: Callable[[], object], repeats: int = 5) -> float:
    """The median milliseconds of `repeats` calls of `work`, one after another."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def runtime_streams(translator: Translator, target: str, options: DecodeOptions, streams: int) -> DecodeAll:
    """The runtime's own path over every batch: one after another on every thread (streams 1), or as
    `Translator.translate` runs them, as many at a time as it has threads, one thread each."""

    def best(hyps: list[list[Hypothesis]]) -> list[list[int]]:
        return [h[0].tokens if h else [] for h in hyps]

    def decode_all(batches: list[list[list[int]]]) -> list[list[list[int]]]:
        if streams <= 1:
            return [best(translator.search(batch, [target] * len(batch), options)) for batch in batches]
        out: list[list[list[int]]] = [[] for _ in batches]
        for index, hyps in translator.search_batches(batches, [[target] * len(b) for b in batches], options):
            out[index] = best(hyps)
        return out

    return decode_all


def runtime_parser(doc: str | None, sentences: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, nargs="+", default=[DEFAULT_MODEL_DIR], help="exported model directories")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sentences", type=int, default=sentences, help="first N test2016 sentences")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--python-steps", action="store_true",
        help="every step of a search selected from Python, none in the C loop of steps (OnnxModel.common_steps)",
    )  # fmt: skip
    return parser


# The benchmarks translate the committed model's test split, in its first direction.
BENCH_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"
BENCH_SPLIT = "test2016"


def bench_data() -> DataConfig:
    return load_config(BENCH_CONFIG, {}).data


def test_pairs(data_dir: str | Path | None) -> tuple[list[str], list[str]]:
    """Sources and references of the benchmark split, in the benchmark config's first direction."""
    data = bench_data()
    return corpus.split_texts(data, corpus.resolve_data_dir(data_dir), BENCH_SPLIT, data.directions[0])


def bench_target() -> str:
    return bench_data().directions[0][1]


def english_test_sentences(args: argparse.Namespace) -> list[str]:
    sources, _ = test_pairs(args.data_dir)
    return list(sources[: args.sentences])


@dataclass(frozen=True)
class RuntimeBench:
    args: argparse.Namespace
    sources: list[str]
    options: DecodeOptions

    @classmethod
    def from_command_line(cls, doc: str | None, sentences: int, rounds: int | None = None) -> RuntimeBench:
        """Options parsed (`sentences`: the default --sentences; `rounds`, where given, the default
        of a --rounds option), sentences read, beam set."""
        parser = runtime_parser(doc, sentences)
        if rounds is not None:
            parser.add_argument("--rounds", type=int, default=rounds)
        args = parser.parse_args()
        return cls(args, english_test_sentences(args), DecodeOptions(beam_size=args.beam_size))

    def translators(self) -> Iterator[tuple[Path, Translator]]:
        """Each --model directory with its translator, loaded in turn."""
        for model_dir in self.args.model:
            translator = Translator.load(model_dir, self.args.threads)
            translator.model.steps_in_c = not self.args.python_steps
            yield model_dir, translator


def service_connection(url: str) -> http.client.HTTPConnection:
    """A kept-alive connection to the service at `url`."""
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)


# The service's translation routes that a benchmark's client calls, by name.
ROUTES = {"native": "/v1/translate", "libretranslate": "/translate"}


def request_body(route: str, text: str, source: str, target: str, beam: int | None = None) -> dict[str, object]:
    """One text's request body on `route` (ROUTES): the native API's at `beam` (None: the server's
    default); LibreTranslate's, whose API takes no beam, at the server's default."""
    if route == "libretranslate":
        return {"q": text, "source": source, "target": target}
    return {"texts": [text], "source": source, "target": target, **({} if beam is None else {"beam_size": beam})}


def post_text(
    connection: http.client.HTTPConnection, route: str, text: str, source: str, target: str, beam: int | None = None
) -> None:
    """One text through `route` (request_body); an answer other than 200 raises."""
    _post_json(connection, ROUTES[route], request_body(route, text, source, target, beam))


def post_translation(connection: http.client.HTTPConnection, text: str, source: str, target: str, beam: int) -> None:
    """One text through the service's /v1/translate; an answer other than 200 raises."""
    post_text(connection, "native", text, source, target, beam)


def _post_json(connection: http.client.HTTPConnection, path: str, body: dict[str, object]) -> None:
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = response.read()
    if response.status != 200:
        raise RuntimeError(f"the service answered {response.status}: {answer[:200]!r}")


def answer_searches_from_cache(gap_s: float = 0.0) -> None:
    """From now on in this process, Translator.search answers a batch it has seen from its first
    answer, after holding the caller for `gap_s`: what a request costs besides its search."""
    search = Translator.search
    answers: dict[object, list[list[Hypothesis]]] = {}

    def answer(
        self: Translator, sources: list[list[int]], targets: list[str], options: DecodeOptions
    ) -> list[list[Hypothesis]]:
        key = (tuple(map(tuple, sources)), tuple(targets), options)
        if key not in answers:
            answers[key] = search(self, sources, targets, options)
        if gap_s:
            time.sleep(gap_s)
        return answers[key]

    Translator.search = answer  # type: ignore[assignment,method-assign]
