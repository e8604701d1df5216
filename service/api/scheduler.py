"""One scheduler merges the sentences of concurrent requests into shared model batches.

- A batch holds sentences for one model with the same decoding options (beam, length penalty,
  max length); targets may differ. Rows x longest source stay within the token budget. Several
  models share the queue, the workers and the budget.
- When the runtime is idle a batch leaves at once. While a batch runs (with more than one
  worker), the next one gathers and leaves when full or after `max_wait_s`.
- Under a steady load of clients that send their next request as soon as they are answered, the
  runtime is idle only between batches, and the clients a batch answered come back a round trip
  later. A batch that left before them would split the clients into two halves that alternate,
  each batch half as large. So where nearly all the clients batches answer come back on the same
  connection within twice `max_wait_s` (service/api/clients.py), a batch waits for those the last
  batch answered, up to that long after it finished (_Returns). Clients that pause between
  requests, and requests that are no client's next, are not waited for.
- Inference runs in worker threads, off the event loop; each caller gets its own results. One
  exception: a small search (one sentence, a few rows and tokens) for a lone client (no other
  open connection sent work lately) runs on the event loop itself while nothing else runs
  (_Callers). Its hand-off to a worker thread and back wakes idle cores, about 0.3 ms of a 7 ms
  sentence (docs/BENCHMARKS.md), and no other client is there to be served sooner by a free loop.
- The queue is bounded in sentences; beyond it `Overloaded`. Requests past their deadline or
  cancelled by their caller leave the queue without costing model time.
- An exception inside a batch fails only that batch's requests, with an id that is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.api import clients
from service.api.metrics import Metrics
from service.runtime.beam import DecodeOptions, Hypothesis
from service.runtime.sessions import SMALL_SEARCH_ROWS
from service.runtime.translator import Translator

log = logging.getLogger("mtserve.scheduler")
T = TypeVar("T")
# A batch waits for returning clients where this share of the clients batches answer came back
# within the window, on a moving average of this weight per batch: clients that pause between
# requests come back that soon only by chance (4 clients pausing 10 ms on average: about 0.6).
RETURNS_SHARE = 0.9
RETURNS_WEIGHT = 0.25
# A batch runs on the event loop only where no other open connection sent work for this long,
# and its one sentence has at most this many tokens: the loop serves nothing else while it
# runs: about 15 ms for a sentence this long on the benchmark machine (docs/DESIGN.md).
ALONE_WINDOW_S = 1.0
LOOP_SEARCH_TOKENS = 32


class Overloaded(Exception):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("the translation queue is full")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The service is draining and accepts no new work."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its translation finished."""


class InferenceFailed(Exception):
    """The model raised while running the batch this request was in."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"inference failed (error id {error_id})")
        self.error_id = error_id


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault injector (setting MTSERVE_FAULT_MARKER)."""


@dataclass(eq=False)
class Ticket:
    """One request's sentences: resolved when all have their hypotheses."""

    future: asyncio.Future[list[list[Hypothesis]]]
    results: list[list[Hypothesis]]
    deadline: float
    remaining: int
    cancelled: bool = False
    client: Hashable | None = None  # the connection it came on (service/api/clients.py)


@dataclass(frozen=True)
class Sentence:
    """One piece of source text to translate: token ids (EOS-terminated) and where they go."""

    ids: list[int]
    target: str
    direction: str  # metrics label, e.g. en-fr
    text: str  # the source text, for the fault injector
    model: str = ""  # which loaded model translates it ("": the only one)


@dataclass
class _Returns:
    """Which clients (connections) the last batch answered, which of them came back within
    `window_s` of its finish, and what share of the clients batches answer come back that soon,
    over the last batches (a moving average)."""

    window_s: float
    finished_at: float = -math.inf
    answered: frozenset[Hashable] = frozenset()
    came_back: set[Hashable] = field(default_factory=set)
    share: float = 0.0
    batches: int = 0  # that answered clients; the first 1 / RETURNS_WEIGHT are averaged evenly

    def entered(self, at: float, client: Hashable | None) -> None:
        if client in self.answered and at - self.finished_at <= self.window_s:
            self.came_back.add(client)

    def batch_finished(self, at: float, answered: set[Hashable]) -> None:
        if self.answered:
            self.batches += 1
            back = len(self.came_back) / len(self.answered)
            self.share += max(RETURNS_WEIGHT, 1 / self.batches) * (back - self.share)
        self.finished_at, self.answered, self.came_back = at, frozenset(answered), set()

    def wait(self, at: float) -> float:
        """Seconds a batch leaving at `at` should still wait for the clients the last batch answered:
        where nearly all clients batches answer come back in time (RETURNS_SHARE)."""
        if self.share < RETURNS_SHARE or len(self.came_back) >= len(self.answered):
            return 0.0
        return max(0.0, self.finished_at + self.window_s - at)


@dataclass
class _Callers:
    """Whether one connection alone has sent work lately: the one that sent the latest, and the others
    that sent work within `window_s` and have not closed since."""

    window_s: float
    latest: Hashable | None = None
    latest_at: float = -math.inf
    others: dict[Hashable, float] = field(default_factory=dict)  # each one's latest request

    def entered(self, at: float, client: Hashable | None) -> None:
        """A request of `client` at `at`; one with no peer named (the service's own warm-up, or a Unix
        socket's, which is never alone) does not count."""
        if client is None:
            return
        if client != self.latest:
            if self.latest is not None:
                self.others[self.latest] = self.latest_at
            self.others.pop(client, None)
            self.latest = client
        self.latest_at = at

    def closed(self, client: Hashable) -> None:
        """`client`'s connection closed: it sends nothing more (a new connection is a new peer)."""
        self.others.pop(client, None)
        if client == self.latest:
            self.latest = None

    def alone(self, at: float, client: Hashable | None) -> bool:
        """Whether `client` is a known connection and no other open one sent work within `window_s`
        (those that sent earlier are forgotten)."""
        if client is None or client != self.latest:
            return False
        for other, seen in list(self.others.items()):
            if at - seen < self.window_s:
                return False
            del self.others[other]
        return True


@dataclass(eq=False)
class _Job:
    ticket: Ticket
    index: int
    sentence: Sentence
    options: DecodeOptions
    enqueued: float
    key: tuple[str, DecodeOptions]  # what a batch's sentences share: the model and the options but n-best

    @property
    def ids(self) -> list[int]:
        return self.sentence.ids


@dataclass(frozen=True)
class _Run:
    """A batch's search in progress: when it started, its model and metrics label, and _infer's
    arguments after the translator (sources, targets, options, texts)."""

    started: float
    model: str
    label: str
    work: tuple[list[list[int]], list[str], DecodeOptions, list[str]]


class Scheduler:
    def __init__(
        self,
        translators: Translator | Mapping[str, Translator],
        metrics: Metrics,
        *,
        batch_tokens: int,
        queue_size: int,
        max_wait_s: float,
        retry_after_s: int = 1,
        workers: int = 1,
        fault_marker: str = "",
    ) -> None:
        self.translators = dict(translators) if isinstance(translators, Mapping) else {"": translators}
        self.metrics = metrics
        self.batch_tokens = batch_tokens
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.workers = workers
        self.fault_marker = fault_marker
        self._queue: deque[_Job] = deque()
        self._published_depth = -1  # the queue depth the metrics hold
        self._running = 0
        self._accepting = True
        self._started = False
        self._dispatch_due = False  # a dispatch is queued on the event loop
        self._fill_timer: asyncio.TimerHandle | None = None  # a gathering batch's departure
        self._returns = _Returns(2 * max_wait_s)
        self._callers = _Callers(ALONE_WINDOW_S)
        self._stop_listening: Callable[[], None] = lambda: None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mtserve-infer")
        self._batches: set[asyncio.Task[None]] = set()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._stop_listening = clients.when_closed(self._callers.closed)
        self._dispatch_soon()

    @property
    def idle(self) -> bool:
        return not self._queue and self._running == 0

    async def drain(self, timeout: float) -> bool:
        """Stop accepting; wait until everything accepted has finished. True if it all did in time."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        while not self.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.idle

    async def stop(self) -> None:
        self._accepting = False
        self._started = False
        self._stop_listening()
        if self._fill_timer is not None:
            self._fill_timer.cancel()
        for job in self._queue:
            if not job.ticket.future.done():
                job.ticket.future.set_exception(ShuttingDown())
        self._queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def run_in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other model work (fill-mask) on the same worker threads as translation."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- requests ----------------------------------------------------------------------

    async def translate(
        self, sentences: Sequence[Sentence], options: DecodeOptions, deadline: float
    ) -> list[list[Hypothesis]]:
        """Hypotheses for each sentence, in order. Raises Overloaded, ShuttingDown, DeadlineExceeded
        or InferenceFailed; cancelling the caller takes its sentences out of the queue."""
        if not sentences:
            return []
        client = clients.connection.get()
        ticket = self._submit(sentences, options, deadline, client)
        now = time.monotonic()
        self._returns.entered(now, client)
        self._callers.entered(now, client)
        # a timer rather than wait_for(shield(...)): the same outcome with three fewer futures a request
        timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), self._expire, ticket)
        try:
            return await ticket.future
        except asyncio.CancelledError:
            self._cancel(ticket)
            raise
        finally:
            timer.cancel()

    def _submit(
        self, sentences: Sequence[Sentence], options: DecodeOptions, deadline: float, client: Hashable | None = None
    ) -> Ticket:
        if not self._accepting:
            raise ShuttingDown()
        # A request larger than the whole queue is still taken when the queue is empty, or it never would be.
        if self._queue and len(self._queue) + len(sentences) > self.queue_size:
            self.metrics.rejected.inc()
            raise Overloaded(self.retry_after_s)
        future: asyncio.Future[list[list[Hypothesis]]] = asyncio.get_running_loop().create_future()
        ticket = Ticket(future, [[] for _ in sentences], deadline, len(sentences), client=client)
        now = time.monotonic()
        shared = options if options.n_best == 1 else dataclasses.replace(options, n_best=1)
        for i, sentence in enumerate(sentences):
            self._queue.append(_Job(ticket, i, sentence, options, now, (sentence.model, shared)))
        self._publish_depth()
        self._dispatch_soon()
        return ticket

    def _publish_depth(self) -> None:
        """The queue's depth to the metrics where it changed: a lone request's dispatch sets it three
        times, each a write to a shared file in a server of several processes."""
        if len(self._queue) != self._published_depth:
            self._published_depth = len(self._queue)
            self.metrics.queue_depth.set(self._published_depth)

    def _cancel(self, ticket: Ticket) -> None:
        ticket.cancelled = True
        self._dispatch_soon()

    def _expire(self, ticket: Ticket) -> None:
        """The request's deadline passed: its caller gets DeadlineExceeded, its sentences leave the queue."""
        if not ticket.future.done():
            ticket.future.set_exception(DeadlineExceeded())
        self._cancel(ticket)

    # ---- dispatch ----------------------------------------------------------------------

    def _drop_dead(self) -> None:
        now = time.monotonic()
        live: deque[_Job] = deque()
        for job in self._queue:
            ticket = job.ticket
            if ticket.cancelled or ticket.future.done():
                continue
            if ticket.deadline <= now:
                ticket.future.set_exception(DeadlineExceeded())
                continue
            live.append(job)
        self._queue = live
        self._publish_depth()

    def _fits(self, rows: int, longest: int) -> bool:
        return rows * longest <= self.batch_tokens

    def _select(self) -> tuple[list[_Job], deque[_Job], bool]:
        """The oldest sentence and, in arrival order, those that share its options and fit the
        budget; the rest; and whether some that shared its options did not fit (the batch is full)."""
        key = self._queue[0].key
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        longest, full = 0, False
        for job in self._queue:
            size = max(longest, len(job.ids))
            if job.key == key and (not batch or self._fits(len(batch) + 1, size)):
                batch.append(job)
                longest = size
            else:
                full |= job.key == key
                rest.append(job)
        return batch, rest, full

    def _take(self, batch: list[_Job], rest: deque[_Job]) -> list[_Job]:
        self._queue = rest
        self._publish_depth()
        return batch

    def _dispatch_soon(self) -> None:
        """Dispatch once the callbacks already due have run: requests that arrive together, each
        its task's turn on the loop, reach the queue before a batch leaves."""
        if not self._dispatch_due:
            self._dispatch_due = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Starts every batch that may leave now, while a worker is free. A batch that should wait to
        fill gets a timer for when it leaves. A callback, not a task of its own: a request costs
        no task switches besides its batch's."""
        self._dispatch_due = False
        if self._fill_timer is not None:
            self._fill_timer.cancel()
            self._fill_timer = None
        while self._started and self._running < self.workers:
            self._drop_dead()
            if not self._queue:
                return
            batch, rest, full = self._select()
            now = time.monotonic()
            if self._running:  # wait to fill while another batch runs
                wait = self._queue[0].enqueued + self.max_wait_s - now
            else:  # wait for the clients the last batch answered, as a steady load's come back
                wait = self._returns.wait(now) if self._accepting else 0.0
            if not full and wait > 0:
                self._fill_timer = asyncio.get_running_loop().call_later(wait, self._dispatch)
                return
            self._take(batch, rest)
            if not self._running and self._on_loop(batch):
                self._execute_on_loop(batch)
                continue
            self._running += 1
            task = asyncio.create_task(self._execute(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _on_loop(self, batch: list[_Job]) -> bool:
        """Whether a batch leaving an idle runtime runs on the event loop: the whole queue, one sentence
        of a small search and at most LOOP_SEARCH_TOKENS tokens, for a lone client (_Callers.alone)."""
        if self._queue or len(batch) != 1:
            return False
        job = batch[0]
        return (
            job.options.beam_size <= SMALL_SEARCH_ROWS
            and len(job.ids) <= LOOP_SEARCH_TOKENS
            and self._callers.alone(time.monotonic(), job.ticket.client)
        )

    async def _execute(self, batch: list[_Job]) -> None:
        run = self._started_batch(batch)
        try:
            # looked up here, on the loop, while the batch's requests hold the model (service/api/residency.py)
            translator = self._translator(run.model)
            hyps = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, translator, *run.work)
        except Exception:
            self._failed(batch)
        else:
            self._answer(batch, run, hyps)
        finally:
            self._running -= 1
            self._finished(batch)

    def _execute_on_loop(self, batch: list[_Job]) -> None:
        """The batch's search on the event loop's own thread (_on_loop), answered before it returns."""
        self.metrics.loop_batches.inc()
        run = self._started_batch(batch)
        try:
            hyps = self._infer(self._translator(run.model), *run.work)
        except Exception:
            self._failed(batch)
        else:
            self._answer(batch, run, hyps)
        finally:
            self._finished(batch)

    def _started_batch(self, batch: list[_Job]) -> _Run:
        """The batch's search arguments, its queue waits and size counted."""
        started = time.monotonic()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.enqueued)
        model, options = batch[0].key
        n_best = max(job.options.n_best for job in batch)
        options = options if options.n_best == n_best else dataclasses.replace(options, n_best=n_best)
        sources = [job.ids for job in batch]
        label = self._label(model)
        self.metrics.child(self.metrics.batch_sentences, label).observe(len(batch))
        self.metrics.child(self.metrics.batch_tokens, label).observe(sum(len(s) for s in sources))
        targets = [job.sentence.target for job in batch]
        return _Run(started, model, label, (sources, targets, options, [job.sentence.text for job in batch]))

    def _failed(self, batch: list[_Job]) -> None:
        error_id = uuid.uuid4().hex[:16]
        log.exception("inference failed error_id=%s batch_sentences=%d", error_id, len(batch))
        for ticket in {job.ticket for job in batch}:
            if not ticket.future.done():
                ticket.future.set_exception(InferenceFailed(error_id))

    def _answer(self, batch: list[_Job], run: _Run, hyps: list[list[Hypothesis]]) -> None:
        metrics = self.metrics
        metrics.child(metrics.inference_seconds, run.label).observe(time.monotonic() - run.started)
        for job, job_hyps in zip(batch, hyps, strict=True):
            metrics.child(metrics.input_tokens, job.sentence.direction, run.label).inc(len(job.ids))
            if job_hyps:
                metrics.child(metrics.output_tokens, job.sentence.direction, run.label).inc(job_hyps[0].length)
            ticket = job.ticket
            ticket.results[job.index] = job_hyps
            ticket.remaining -= 1
            if ticket.remaining == 0 and not ticket.future.done():
                ticket.future.set_result(ticket.results)

    def _finished(self, batch: list[_Job]) -> None:
        answered = {job.ticket.client for job in batch if job.ticket.future.done()}
        self._returns.batch_finished(time.monotonic(), answered - {None})
        self._dispatch_soon()

    def _label(self, model: str) -> str:
        """The metrics label: the model's name (with one model, the only one's)."""
        return model or next(iter(self.translators))

    def _translator(self, model: str) -> Translator:
        return self.translators[model] if model else next(iter(self.translators.values()))

    def _infer(
        self,
        translator: Translator,
        sources: list[list[int]],
        targets: list[str],
        options: DecodeOptions,
        texts: list[str],
    ) -> list[list[Hypothesis]]:
        if self.fault_marker and any(self.fault_marker in text for text in texts):
            raise InjectedFault(f"fault injected: a sentence contains {self.fault_marker!r}")
        return translator.search(sources, targets, options)
