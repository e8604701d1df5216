"""The request scheduler over the real runtime and the committed model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from service.api import clients
from service.api import scheduler as scheduler_module
from service.api.errors import ApiError, guarded
from service.api.metrics import Metrics
from service.api.middleware import RequestContextMiddleware
from service.api.scheduler import (
    DeadlineExceeded,
    InferenceFailed,
    Overloaded,
    Scheduler,
    Sentence,
    ShuttingDown,
)
from service.manifest import DEFAULT_MODEL_DIR
from service.runtime.beam import DecodeOptions, Hypothesis
from service.runtime.translator import Translator

T = TypeVar("T")
SENTENCES = ["A man is playing a guitar.", "Two dogs run on the beach.", "A girl in a red dress.", "People walk."]
# Copies of SENTENCES that keep the model busy past a 50 ms deadline even on a fast CPU (16 were done
# within it on one), and that fit the queue of 256 with another request beside them.
BUSY_COPIES = 60


@pytest.fixture(scope="module")
def translator() -> Iterator[Translator]:
    yield Translator.load(DEFAULT_MODEL_DIR, intra_op_threads=2)


def _run(translator: Translator, body: Callable[[Scheduler], Awaitable[T]], **kwargs: object) -> T:
    async def main() -> T:
        settings = {"batch_tokens": 2048, "queue_size": 256, "max_wait_s": 0.005, **kwargs}
        scheduler = Scheduler(translator, Metrics(), **settings)  # type: ignore[arg-type]
        scheduler.start()
        try:
            return await body(scheduler)
        finally:
            await scheduler.stop()

    return asyncio.run(main())


def _sample(scheduler: Scheduler, name: str) -> float:
    """A sample summed over its labels (batch metrics carry the model's)."""
    samples = [s for metric in scheduler.metrics.registry.collect() for s in metric.samples if s.name == name]
    return sum(s.value for s in samples)


def _request(
    scheduler: Scheduler, translator: Translator, texts: list[str], deadline_s: float = 30.0
) -> Coroutine[Any, Any, list[list[Hypothesis]]]:
    sentences = [Sentence(translator.prepare(t).pieces[0], "fr", "en-fr", t) for t in texts]
    return scheduler.translate(sentences, DecodeOptions(), time.monotonic() + deadline_s)


def test_results_come_back_to_each_caller_in_order(translator: Translator) -> None:
    expected = translator.translate(SENTENCES, "fr")

    async def body(scheduler: Scheduler) -> list[list[str]]:
        results = await asyncio.gather(*(_request(scheduler, translator, [s]) for s in SENTENCES))
        return [[translator.tokenizer.decode(h[0].tokens) for h in r] for r in results]

    assert _run(translator, body) == [[e[0].text] for e in expected]


def test_requests_arriving_while_busy_share_the_next_batch(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[float, float]:
        first = asyncio.ensure_future(_request(scheduler, translator, SENTENCES[:1]))
        await asyncio.sleep(0.001)  # the first batch leaves at once, alone
        rest = [asyncio.ensure_future(_request(scheduler, translator, [s])) for s in SENTENCES * 4]
        await asyncio.gather(first, *rest)
        return _sample(scheduler, "mtserve_batch_sentences_sum"), _sample(scheduler, "mtserve_batch_sentences_count")

    sentences, batches = _run(translator, body)
    assert sentences == 17 and batches <= 3


def test_requests_arriving_together_while_idle_leave_in_one_batch(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> float:
        await asyncio.gather(*(_request(scheduler, translator, [s]) for s in SENTENCES))
        return _sample(scheduler, "mtserve_batch_sentences_count")

    assert _run(translator, body) == 1


async def _client(
    scheduler: Scheduler, translator: Translator, index: int, requests: int, same_connection: bool = True
) -> list[float]:
    """A client that sends its next request as soon as it has read the last answer (0 to 2 ms
    later), on one connection or on a new one each time; each request's seconds."""
    seconds = []
    for k in range(requests):
        clients.connection.set(("client", index) if same_connection else ("request", index, k))
        started = time.monotonic()
        await _request(scheduler, translator, [SENTENCES[(index + k) % len(SENTENCES)]])
        seconds.append(time.monotonic() - started)
        await asyncio.sleep(0.001 * (index % 3))
    return seconds


def test_a_steady_load_keeps_its_clients_in_one_batch(translator: Translator) -> None:
    # Each batch leaving as soon as the runtime is idle would split six clients into halves that alternate.
    async def body(scheduler: Scheduler) -> tuple[float, float]:
        await asyncio.gather(*(_client(scheduler, translator, i, 10) for i in range(6)))
        return _sample(scheduler, "mtserve_batch_sentences_sum"), _sample(scheduler, "mtserve_batch_sentences_count")

    sentences, batches = _run(translator, body, workers=1, max_wait_s=0.05)
    assert sentences == 60 and sentences / batches >= 5


def test_requests_that_are_no_clients_next_are_not_waited_for(translator: Translator) -> None:
    # The same arrivals, each request on a connection of its own: nothing tells that they come back.
    async def body(scheduler: Scheduler) -> list[list[float]]:
        return list(await asyncio.gather(*(_client(scheduler, translator, i, 6, False) for i in range(6))))

    per_client = _run(translator, body, workers=1, max_wait_s=0.5)
    assert all(seconds < 0.5 for client in per_client for seconds in client), per_client


def test_a_lone_client_is_not_held_for_clients_gone(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[list[float], list[float]]:
        await asyncio.gather(*(_client(scheduler, translator, i, 4) for i in range(6)))
        at_once = await _client(scheduler, translator, 0, 6)
        await asyncio.gather(*(_client(scheduler, translator, i, 4) for i in range(6)))
        await asyncio.sleep(0.4)  # longer than a batch waits: the six are not coming back
        return at_once, await _client(scheduler, translator, 0, 6)

    at_once, later = _run(translator, body, workers=1, max_wait_s=0.3)
    # Right after the six, two batches may still wait for them; later ones leave at once.
    assert all(seconds < 0.3 for seconds in at_once[2:]), at_once
    assert all(seconds < 0.3 for seconds in later), later


def test_each_request_carries_the_connection_it_came_on() -> None:
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(clients.connection.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        wrapped = RequestContextMiddleware(app, Metrics(), lambda: "sha", 1024, 1024)

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        for peer in (("10.0.0.1", 50001), ("10.0.0.1", 50002), None):
            scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": peer}
            await wrapped(scope, receive, send)
        seen.append(clients.connection.get())  # outside a request

    asyncio.run(main())
    assert seen == [("10.0.0.1", 50001), ("10.0.0.1", 50002), None, None]


def test_a_deadline_passing_in_the_queue_answers_then_and_costs_no_model_time(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[object, float, bool, float]:
        busy = asyncio.ensure_future(_request(scheduler, translator, SENTENCES * BUSY_COPIES))
        await asyncio.sleep(0.01)  # its batch has left
        started = time.monotonic()
        outcome: object = None
        try:
            await _request(scheduler, translator, SENTENCES, deadline_s=0.05)
        except DeadlineExceeded as exc:
            outcome = exc
        waited = time.monotonic() - started
        still_busy = not busy.done()
        await busy
        return outcome, waited, still_busy, _sample(scheduler, "mtserve_batch_sentences_sum")

    late, waited, still_busy, translated = _run(translator, body)
    assert isinstance(late, DeadlineExceeded) and still_busy and waited < 0.5
    assert translated == len(SENTENCES) * BUSY_COPIES


def test_a_full_queue_refuses_with_retry_after(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> list[object]:
        tasks = [asyncio.ensure_future(_request(scheduler, translator, [s])) for s in SENTENCES * 4]
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = _run(translator, body, queue_size=4)
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if isinstance(o, list)]
    assert refused and served and len(refused) + len(served) == 16
    assert all(r.retry_after >= 1 for r in refused)


def test_a_request_past_its_deadline_is_dropped(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> list[object]:
        return list(
            await asyncio.gather(_request(scheduler, translator, SENTENCES, deadline_s=0.0), return_exceptions=True)
        )

    (outcome,) = _run(translator, body)
    assert isinstance(outcome, DeadlineExceeded)


def test_a_cancelled_request_leaves_the_queue(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> float:
        busy = asyncio.ensure_future(_request(scheduler, translator, SENTENCES))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(_request(scheduler, translator, SENTENCES * 8))
        await asyncio.sleep(0)
        waiting.cancel()
        await busy
        await asyncio.sleep(0.05)
        return _sample(scheduler, "mtserve_batch_sentences_sum")

    assert _run(translator, body) == len(SENTENCES)


def test_drain_finishes_accepted_work_and_refuses_new(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[object, bool, object]:
        accepted = asyncio.ensure_future(_request(scheduler, translator, SENTENCES))
        await asyncio.sleep(0)
        drained = asyncio.ensure_future(scheduler.drain(10))
        await asyncio.sleep(0)
        late = await asyncio.gather(_request(scheduler, translator, SENTENCES[:1]), return_exceptions=True)
        return await accepted, await drained, late[0]

    result, finished, late = _run(translator, body)
    assert isinstance(result, list) and len(result) == len(SENTENCES) and finished
    assert isinstance(late, ShuttingDown)


def _searching_threads(scheduler: Scheduler) -> list[int]:
    """The thread of each search the scheduler runs from now on."""
    threads: list[int] = []
    infer = scheduler._infer

    def recorded(*args: Any) -> list[list[Hypothesis]]:
        threads.append(threading.get_ident())
        return infer(*args)

    scheduler._infer = recorded  # type: ignore[method-assign,assignment]
    return threads


def _texts(results: list[list[Hypothesis]], translator: Translator) -> list[str]:
    return [translator.tokenizer.decode(r[0].tokens) for r in results]


def test_a_lone_connections_sentence_runs_on_the_loop_with_the_same_translation(translator: Translator) -> None:
    expected = [e[0].text for e in translator.translate(SENTENCES, "fr")]

    async def body(scheduler: Scheduler) -> tuple[list[str], list[int], int]:
        threads = _searching_threads(scheduler)
        clients.connection.set(("client", 0))
        texts = [_texts(await _request(scheduler, translator, [s]), translator)[0] for s in SENTENCES]
        return texts, threads, threading.get_ident()

    texts, threads, loop_thread = _run(translator, body)
    assert texts == expected
    assert threads == [loop_thread] * len(SENTENCES)


def test_other_connections_long_sentences_and_several_keep_the_worker_threads(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "ALONE_WINDOW_S", 0.5)
    long_text = " ".join(["A man in a blue shirt is playing a guitar on the street"] * 6)
    assert len(translator.prepare(long_text).pieces[0]) > scheduler_module.LOOP_SEARCH_TOKENS

    async def body(scheduler: Scheduler) -> tuple[list[int], int]:
        threads = _searching_threads(scheduler)
        for connection in (("client", 0), ("client", 1), ("client", 0)):  # two connections within the window
            clients.connection.set(connection)
            await _request(scheduler, translator, SENTENCES[:1])
        await asyncio.sleep(0.6)  # the other connection no longer counts
        await _request(scheduler, translator, SENTENCES[:1])  # on the loop
        await _request(scheduler, translator, [long_text])
        await _request(scheduler, translator, SENTENCES[:2])
        clients.connection.set(None)  # no peer named (the service's own warm-up): not alone, and no other client
        await _request(scheduler, translator, SENTENCES[:1])
        clients.connection.set(("client", 0))
        await _request(scheduler, translator, SENTENCES[:1])
        return threads, threading.get_ident()

    threads, loop_thread = _run(translator, body)
    assert [thread == loop_thread for thread in threads] == [True, False, False, True, False, False, False, True]


def test_a_failure_on_the_loop_fails_only_its_request(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[list[object], list[int], int]:
        threads = _searching_threads(scheduler)
        clients.connection.set(("client", 0))
        outcomes: list[object] = []
        for text in ("A man is FAULTY here.", SENTENCES[0]):
            outcomes.extend(await asyncio.gather(_request(scheduler, translator, [text]), return_exceptions=True))
        return outcomes, threads, threading.get_ident()

    (failed, served), threads, loop_thread = _run(translator, body, fault_marker="FAULTY")
    assert isinstance(failed, InferenceFailed) and isinstance(served, list) and len(served) == 1
    assert threads == [loop_thread, loop_thread]


def test_a_closed_connection_no_longer_counts_as_another_client(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[list[int], int]:
        threads = _searching_threads(scheduler)
        for k in range(3):  # a client that opens a connection for each request, closed before the next
            clients.connection.set(("request", k))
            await _request(scheduler, translator, SENTENCES[:1])
            clients.closed(("request", k))
        for k in (3, 4):  # the next two both open
            clients.connection.set(("request", k))
            await _request(scheduler, translator, SENTENCES[:1])
        return threads, threading.get_ident()

    threads, loop_thread = _run(translator, body)
    assert [thread == loop_thread for thread in threads] == [True, True, True, True, False]


def _request_whose_client(leaves: asyncio.Event) -> Request:
    """A request whose body has been read: the server reports the client gone once `leaves` is set."""

    async def receive() -> Message:
        await leaves.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/translate", "headers": []}, receive)


def test_a_client_that_leaves_gets_499_and_its_sentences_leave_the_queue(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[int, float]:
        busy = asyncio.ensure_future(_request(scheduler, translator, SENTENCES))
        await asyncio.sleep(0)
        leaves = asyncio.Event()
        waiting = asyncio.ensure_future(
            guarded(_request_whose_client(leaves), _request(scheduler, translator, SENTENCES * 8))
        )
        await asyncio.sleep(0)
        leaves.set()
        with pytest.raises(ApiError) as left:
            await waiting
        await busy
        await asyncio.sleep(0.05)
        return left.value.status, _sample(scheduler, "mtserve_batch_sentences_sum")

    assert _run(translator, body) == (499, len(SENTENCES))


def test_a_client_leaving_after_its_answer_cancels_nothing_later(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> tuple[int, str]:
        leaves = asyncio.Event()
        hyps = await guarded(_request_whose_client(leaves), _request(scheduler, translator, SENTENCES[:1]))
        leaves.set()
        await asyncio.sleep(0.01)  # the request's task goes on (its answer is sent) uncancelled
        return len(hyps), translator.tokenizer.decode(hyps[0][0].tokens)

    count, text = _run(translator, body)
    assert count == 1 and "guitare" in text


def test_a_request_cancelled_from_outside_stays_cancelled(translator: Translator) -> None:
    async def body(scheduler: Scheduler) -> float:
        busy = asyncio.ensure_future(_request(scheduler, translator, SENTENCES))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(
            guarded(_request_whose_client(asyncio.Event()), _request(scheduler, translator, SENTENCES * 8))
        )
        await asyncio.sleep(0)
        waiting.cancel()  # as the server does at shutdown: no 499, the cancellation goes on
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await busy
        await asyncio.sleep(0.05)
        return _sample(scheduler, "mtserve_batch_sentences_sum")

    assert _run(translator, body) == len(SENTENCES)
