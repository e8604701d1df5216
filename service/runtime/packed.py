"""Graphs saved with their pre-packed weights, made once per model, CPU and onnxruntime version.

onnxruntime pre-packs every matrix a MatMul or Gemm multiplies by into a layout of its own, and
each session keeps its own packed copy on the heap: about twice a model's weights for the two
sessions a graph has (sessions.py). A graph that onnxruntime optimised and saved with option
`session.save_external_prepacked_constant_initializers` carries the packed matrices in its data
file; a session over it still packs at load, finds the same bytes in the file (looked up by their
hash) and keeps the memory-mapped file's copy instead of its own. Every session of the graph, in
every process, then shares one copy through the page cache, and weights only looked up (the
embedding) stay on disk until a token needs their row.

The packed layout depends on the CPU's instruction set and on onnxruntime's kernels, so the
files are keyed by both; a key that misses makes new ones. The files are written under a
temporary name and renamed into place whole, one process at a time (a lock file), so that
concurrent loads of one model (several processes) never read half a file nor make it twice.
Where the directory cannot be written the sessions open the graphs as exported, with the heap
copies.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from service.manifest import checked_sha256, sha256_file
from service.runtime import denormals, native

log = logging.getLogger("mtserve.runtime")

OFF = "off"
FILES_FILE = "files.json"  # each file's size and sha256, and what the copy was made for
CPUID_KERNEL = " cpuid:"  # in the CPU's signature, before the kernel its CPUID answers for
LOCK_FILE = "packing.lock"  # held by the process making a copy, in the directory of all copies
# Instruction-set flags that change how onnxruntime's kernels pack and which kernels run.
_ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "i8mm", "bf16")  # fmt: skip


def packed_dir(setting: str | None = None) -> Path | None:
    """Where packed copies are kept: `setting` (default $MTSERVE_PACKED_DIR; `off`: nowhere, every
    session packs its own), else mtserve/packed in the user's cache directory."""
    setting = os.environ.get("MTSERVE_PACKED_DIR", "") if setting is None else setting
    if setting.strip().lower() == OFF:
        return None
    if setting.strip():
        return Path(setting.strip())
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mtserve" / "packed"


@functools.cache
def cpu_signature() -> str:
    """The CPU's model name and the instruction-set flags that decide the packed layout, and the kernel
    its own CPUID answers for (native.cpuid_kernel): under an emulator that presents an older CPU the
    flags are the host's, and a copy packed for those would be read as this one's."""
    name, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == platform.machine():
                name += " " + value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    kernel = native.cpuid_kernel()
    return name + " " + " ".join(f for f in _ISA_FLAGS if f in flags) + (f"{CPUID_KERNEL}{kernel}" if kernel else "")


def packed_key(graph_sha256: str, weights_sha256: str) -> str:
    """The name of one graph's packed copy: its files, this CPU and this onnxruntime."""
    parts = (graph_sha256, weights_sha256, ort.__version__, cpu_signature())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _intact(directory: Path, graph_name: str, verify: bool) -> bool:
    """Whether a packed copy is whole: every file it recorded, at the size recorded and, with
    `verify`, with the hash recorded (once per process while the file is unchanged). onnxruntime
    checks the packed matrices against what it packs itself, but not the weights it reads as
    they are."""
    try:
        recorded = json.loads((directory / FILES_FILE).read_text())["files"]
        if graph_name not in recorded:
            return False
        for name, (size, digest) in recorded.items():
            path = directory / name
            stat = path.stat()
            if stat.st_size != size:
                return False
            if verify and checked_sha256(path) != digest:
                log.warning("the packed copy %s does not match what was written: made again", path)
                return False
        return True
    except (OSError, ValueError, TypeError, KeyError):
        return False


def _made_for(source: Path) -> dict[str, str]:
    return {"graph": str(source.resolve()), "cpu": cpu_signature(), "onnxruntime": ort.__version__}


def _stale(recorded: object, made_for: dict[str, str]) -> bool:
    """Whether a copy made for `recorded` is one this process replaces: made for the same graph file,
    CPU and onnxruntime, or so under the key of before the CPUID's kernel was part of it."""
    cpu, separator, _ = made_for["cpu"].partition(CPUID_KERNEL)
    return recorded == made_for or (bool(separator) and recorded == {**made_for, "cpu": cpu})


def _prune(root: Path, keep: str, made_for: dict[str, str]) -> None:
    """Remove copies made for the same graph file on this CPU and onnxruntime, under another key:
    the model's files changed since, or the key's form (copies for other CPUs or versions, in a
    shared directory, stay)."""
    for directory in root.iterdir():
        if directory.name == keep or directory.name.startswith("."):
            continue
        try:
            if _stale(json.loads((directory / FILES_FILE).read_text()).get("made_for"), made_for):
                shutil.rmtree(directory, ignore_errors=True)
                log.info("removed the packed copy %s: %s changed since", directory, made_for["graph"])
        except (OSError, ValueError, AttributeError):
            continue


def _write(source: Path, target: Path) -> None:
    """onnxruntime optimises the graph for this CPU and saves it with its packed weights."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # its warning that the copy suits this CPU only is why the key names the CPU
    denormals.first_session()  # the copy's constants folded in this thread's own mode, as a session's
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def packed_graph(source: Path, key: str, root: Path, verify: bool = True) -> Path | None:
    """The packed copy of `source` under root/key, made if missing or damaged (`verify`: its
    files' hashes checked, as a model's own are); None where it cannot be made (the caller opens
    `source` itself)."""
    directory = root / key
    if _intact(directory, source.name, verify):
        return directory / source.name
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / LOCK_FILE, "a")  # noqa: SIM115 (held until the copy is in place)
    except OSError as exc:
        _cannot_write(root, exc, source)
        return None
    with lock:
        # Processes that load at once (a server of several) make copies one at a time: the others
        # wait, then find theirs whole, and none removes a copy another is opening.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _intact(directory, source.name, verify):
            return directory / source.name
        return _make(source, key, root, directory)


def _cannot_write(root: Path, exc: OSError, source: Path) -> None:
    log.warning("cannot write packed weights to %s (%s): each session of %s packs its own", root, exc, source)


def _make(source: Path, key: str, root: Path, directory: Path) -> Path | None:
    started = time.perf_counter()
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    except OSError as exc:
        _cannot_write(root, exc, source)
        return None
    try:
        _write(source, staging / source.name)
        files = {p.name: (p.stat().st_size, sha256_file(p)) for p in staging.iterdir()}
        (staging / FILES_FILE).write_text(json.dumps({"files": files, "made_for": _made_for(source)}))
        shutil.rmtree(directory, ignore_errors=True)  # a copy left broken or damaged: replaced
        staging.rename(directory)
    except Exception as exc:  # onnxruntime's own errors are untyped
        log.warning("cannot make packed weights for %s in %s (%s): each session packs its own", source, root, exc)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("packed %s for this CPU in %.1f s (%s)", source, time.perf_counter() - started, directory)
    _prune(root, key, _made_for(source))
    return directory / source.name


def discard(path: Path) -> None:
    """Remove a packed copy that onnxruntime refused, so that the next load makes it again."""
    shutil.rmtree(path.parent, ignore_errors=True)
