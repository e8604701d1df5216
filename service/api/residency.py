"""Which installed models are in memory: all of them from the start, or, within a memory budget,
each one from its first request on, the least recently used idle ones unloaded to make room.

- A model in use (a request holds it, queued or running; each leg of a pivot is such a request)
  is never unloaded; nor is one of MTSERVE_PRELOAD.
- Concurrent requests for a cold model cause one load; they wait for it within their deadline,
  then get 503 with Retry-After.
- A model whose files fail their check when it loads answers 503 naming it; the others go on.
- What counts against the budget is each model's estimate from its files (graphs and weights times
  LOAD_FACTOR): a process's resident growth during one load also holds allocator and library
  start-up costs, and concurrent loads blur it. What loading added is reported per model
  (mtserve_model_resident_bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from service.api.heap import collect_released
from service.api.metrics import Metrics
from service.api.models import Installed, ModelSet, ServedModel
from service.api.scheduler import Scheduler
from service.manifest import ModelFileError
from service.runtime.sessions import trim_heap

log = logging.getLogger("mtserve.residency")

# A loaded model holds at most about this many times its files (graphs and weights),
# docs/BENCHMARKS.md: with packed copies of its graphs (service/runtime/packed.py) under 1.0 once
# loaded and once idle after batches (the lookup rows a batch read given back), with room for a
# batch in flight; without, 2.5 (one wide and one narrow session per graph, each packing its own).
LOAD_FACTOR = 1.2
UNPACKED_LOAD_FACTOR = 2.5
# A load that failed is not tried again for this long: its requests get 503 at once.
FAILED_RETRY_S = 30.0


class ModelUnavailable(Exception):
    """A model cannot serve now: its load failed, or it did not load within the request's deadline."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetError(ValueError):
    """The memory budget or the preload list cannot be met: names the model."""


def budgeted_bytes(entry: Installed, packed: bool = True) -> int:
    """What a model counts against the budget: what it is expected to hold once loaded.
    packed: whether its graphs have packed copies (MTSERVE_PACKED_DIR not off)."""
    return int(entry.disk_bytes * (LOAD_FACTOR if packed else UNPACKED_LOAD_FACTOR))


def check_budget(entries: Sequence[Installed], budget: int | None, preload: Sequence[str], packed: bool = True) -> None:
    names = [e.name for e in entries]
    unknown = [name for name in preload if name not in names]
    if unknown:
        raise BudgetError(f"MTSERVE_PRELOAD names {unknown}, not an installed model ({', '.join(names)})")
    if budget is None:
        return
    for entry in entries:
        need = budgeted_bytes(entry, packed)
        if need > budget:
            raise BudgetError(
                f"model {entry.name} ({entry.model_dir}) needs about {need / 2**20:.0f} MiB, "
                f"over the whole memory budget ({budget / 2**20:.0f} MiB, MTSERVE_MEMORY_BUDGET)"
            )
    pinned = sum(budgeted_bytes(e, packed) for e in entries if e.name in preload)
    if pinned > budget:
        raise BudgetError(f"the preloaded models need about {pinned / 2**20:.0f} MiB, over MTSERVE_MEMORY_BUDGET")


@dataclass
class _Slot:
    entry: Installed
    model: ServedModel | None = None
    users: int = 0
    loading: asyncio.Future[ServedModel] | None = None
    failed: tuple[float, str] | None = None  # when, and why
    pinned: bool = False
    packed: bool = True

    @property
    def bytes(self) -> int:
        return budgeted_bytes(self.entry, self.packed)


@dataclass
class Residency:
    models: ModelSet
    loader: Callable[[Installed], ServedModel]
    scheduler: Scheduler
    metrics: Metrics
    budget: int | None = None  # bytes; None: every model loads at start and stays
    preload: Sequence[str] = ()
    retry_after_s: int = 1
    packed: bool = True  # the graphs have packed copies (budgeted_bytes)
    _slots: dict[str, _Slot] = field(init=False)
    _recent: OrderedDict[str, None] = field(init=False)  # least recently used first
    _reserved: set[str] = field(init=False)  # loading, their room in the budget taken
    _changed: asyncio.Condition = field(init=False)  # a model released, loaded, or failed to load

    def __post_init__(self) -> None:
        self._slots = {e.name: _Slot(e, pinned=self.budget is None or e.name in self.preload, packed=self.packed)
                       for e in self.models.entries}  # fmt: skip
        self._recent = OrderedDict()
        self._reserved = set()
        self._changed = asyncio.Condition()
        check_budget(self.models.entries, self.budget, self.preload, self.packed)

    def loaded(self) -> list[ServedModel]:
        return [s.model for s in self._slots.values() if s.model is not None]

    def resident_bytes(self) -> int:
        """What the loaded models hold, and those loading with their room taken will."""
        return sum(s.bytes for name, s in self._slots.items() if s.model is not None or name in self._reserved)

    async def start(self) -> None:
        """Eager: every model. With a budget: the preloaded ones."""
        for slot in self._slots.values():
            if slot.pinned:
                async with self.use(slot.entry.name, time.monotonic() + 3600):
                    pass

    @contextlib.asynccontextmanager
    async def use(self, name: str, deadline: float) -> AsyncIterator[ServedModel]:
        """The loaded model, held (never unloaded) until the block ends."""
        slot = self._slots[name]
        slot.users += 1
        try:
            model = slot.model or await self._await_load(slot, deadline)
            self._recent.pop(name, None)
            self._recent[name] = None
            yield model
        finally:
            slot.users -= 1
            await self._notify()

    async def _await_load(self, slot: _Slot, deadline: float) -> ServedModel:
        if slot.failed is not None and time.monotonic() - slot.failed[0] < FAILED_RETRY_S:
            raise ModelUnavailable(slot.failed[1], self.retry_after_s)
        if slot.loading is None:
            slot.loading = asyncio.ensure_future(self._load(slot))
        else:
            self.metrics.load_waits.labels(slot.entry.name).inc()
        try:
            return await asyncio.wait_for(asyncio.shield(slot.loading), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise ModelUnavailable(
                f"model {slot.entry.name} is still loading; retry shortly", self.retry_after_s
            ) from None

    async def _load(self, slot: _Slot) -> ServedModel:
        name = slot.entry.name
        try:
            await self._make_room(slot)
            started = time.perf_counter()
            model = await asyncio.to_thread(self.loader, slot.entry)
            seconds = time.perf_counter() - started
            slot.model, slot.failed = model, None  # in the budget from here on, as loaded
        except ModelFileError as exc:
            log.error("model %s cannot load: %s", name, exc)
            slot.failed = (
                time.monotonic(),
                f"model {name} is unavailable: its files failed their check ({exc.path.name})",
            )
            raise ModelUnavailable(slot.failed[1], self.retry_after_s) from None
        finally:
            slot.loading = None
            self._reserved.discard(name)
            await self._notify()
        self.scheduler.translators[name] = model.translator
        self.metrics.loads.labels(name).inc()
        self.metrics.load_seconds.observe(seconds)
        self.metrics.models_loaded.set(len(self.loaded()))
        self.metrics.model_memory.labels(name).set(model.resident_bytes)
        self.metrics.unpacked_graphs.labels(name).set(len(model.translator.model.unpacked_graphs))
        entry = slot.entry
        log.info(
            "model %s from %s: %s, directions %s, %.0f MB resident, loaded in %.2f s; %d loaded",
            name, entry.model_dir, entry.version, ", ".join(f"{a}-{b}" for a, b in entry.directions),
            model.resident_bytes / 1e6, seconds, len(self.loaded()),
        )  # fmt: skip
        return model

    async def _make_room(self, slot: _Slot) -> None:
        """Take this model's room in the budget: unload the least recently used idle models until it
        fits; while the rest are in use or still loading, wait for one of them to change."""
        if self.budget is None:
            return
        async with self._changed:
            while self.resident_bytes() + slot.bytes > self.budget:
                idle = [n for n in self._recent if self._evictable(self._slots[n])]
                if idle:
                    self._unload(self._slots[idle[0]])
                    continue
                await self._changed.wait()
            self._reserved.add(slot.entry.name)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _evictable(self, slot: _Slot) -> bool:
        return slot.model is not None and slot.users == 0 and not slot.pinned

    def _unload(self, slot: _Slot) -> None:
        name = slot.entry.name
        self.scheduler.translators.pop(name, None)
        slot.model = None
        self._recent.pop(name, None)
        collect_released()
        trim_heap()
        self.metrics.unloads.labels(name).inc()
        self.metrics.models_loaded.set(len(self.loaded()))
        self.metrics.model_memory.labels(name).set(0)
        self.metrics.unpacked_graphs.labels(name).set(0)
        log.info("model %s unloaded (least recently used); %d loaded", name, len(self.loaded()))
