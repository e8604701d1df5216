"""The benchmark's baselines decode what the runtime decodes."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import made_from, makers_digest, mark_made, reusable
from bench.engines import TextbookDecoder
from bench.perturbed_bleu import perturbed_copy
from export.quantize import WEIGHT_MAX
from model.artifacts import load_model_dir
from model.beam import beam_search
from service.conventions import EOS_ID
from tests.conftest import TAG

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("beam_size", [1, 3])
def test_textbook_loop_equals_the_kv_cache(tiny_model_dir: Path, sentences: list[str], beam_size: int) -> None:
    model, sp = load_model_dir(tiny_model_dir)
    sources = [[*ids, EOS_ID] for ids in sp.encode(sentences[:8])]
    tag = TAG["fr"]
    with torch.no_grad():
        cached = beam_search(model, sources, tag, beam_size=beam_size)
        textbook = beam_search(TextbookDecoder(model), sources, tag, beam_size=beam_size)  # type: ignore[arg-type]
    for a, b in zip(cached, textbook, strict=True):
        assert a[0].tokens == b[0].tokens
        assert a[0].score == pytest.approx(b[0].score, abs=1e-4)


def test_interleaved_rounds_report_medians_and_per_round_ratios() -> None:
    from bench.interleaved import summarize

    rows = [
        {"engine": engine, "precision": "int8", "beam": 5, "round": r, "tok_per_s": speed}
        for r, (ours, theirs) in enumerate([(300.0, 200.0), (100.0, 100.0), (330.0, 220.0)])
        for engine, speed in (("mtserve-onnx", ours), ("ctranslate2", theirs))
    ]
    by_engine = {s["summary"]: s for s in summarize(rows)}
    ours, theirs = by_engine["mtserve-onnx"], by_engine["ctranslate2"]
    assert ours["median_tok_per_s"] == 300.0 and (ours["min_tok_per_s"], ours["max_tok_per_s"]) == (100.0, 330.0)
    # the slow round slowed both engines: per-round ratios 1.5, 1.0, 1.5, median 1.5
    assert ours["ratios_per_round"] == [1.5, 1.0, 1.5] and ours["median_ratio_vs_ctranslate2"] == 1.5
    assert "median_ratio_vs_ctranslate2" not in theirs and theirs["rounds"] == 3


def test_the_cross_attention_bench_times_each_kernel_it_checked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/cross_attention.py checks the host's kernels against the node and times each, the exact
    one where the CPU has it."""
    from bench import cross_attention
    from service.runtime import native

    if native.common_step is None:
        pytest.skip(native.NOT_BUILT)
    monkeypatch.setattr("sys.argv", ["cross_attention.py", "--sentences", "2", "--source", "9", "--runs", "2"])
    cross_attention.main()
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["rows"] == 10 and row["source"] == 9 and row["node_us"] > 0 and row["host_us"] > 0
    avx512 = native.common_step.exact_cross_attention() == native.common_step.EXACT_AVX512
    assert (row["exact_us"] is not None) == (row["exact_avx2_us"] is not None) == avx512


@pytest.mark.parametrize(("sentences", "past"), [(1, 1), (1, 15), (3, 7), (2, 16)])
def test_masked_self_attention_is_the_kernels(sentences: int, past: int) -> None:
    """bench/self_attention.py's masked variant computes what DecoderMaskedMultiHeadAttention does
    over the beam indirection, and a mask that ignores the indirection does not."""
    from bench.self_attention import Bench

    bench = Bench(capacity=32, runs=1)
    capacity = max(16, -(-past // 16) * 16)
    difference, _ = bench.masked_difference(sentences, past, capacity)
    assert difference < 1e-5

    def every_slot(bias: np.ndarray) -> np.ndarray:  # each row reading every beam's written positions
        slots = np.isfinite(bias).reshape(*bias.shape[:3], -1, capacity).any(axis=3, keepdims=True)
        allowed = np.broadcast_to(slots, (*bias.shape[:3], bias.shape[3] // capacity, capacity))
        return np.where(allowed, 0.0, -np.inf).astype(np.float32).reshape(bias.shape)

    wrong, _ = bench.masked_difference(sentences, past, capacity, every_slot)
    assert wrong > 1e-3


@pytest.mark.parametrize(("sentences", "past"), [(1, 0), (1, 9), (3, 20)])
def test_group_query_attention_over_rows_own_histories_is_the_kernels(sentences: int, past: int) -> None:
    """bench/self_attention.py's gqa variant computes what DecoderMaskedMultiHeadAttention does where
    every row's history lies in its own row."""
    from bench.self_attention import Bench

    assert Bench(capacity=24, runs=1).own_history_difference(sentences, past, "gqa") < 1e-5


@pytest.mark.parametrize(("sentences", "past"), [(1, 0), (1, 9), (3, 20)])
def test_beam_free_kernel_over_rows_own_histories_is_the_beam_kernels(sentences: int, past: int) -> None:
    """bench/self_attention.py's rows variant (the kernel without its beam inputs) computes what the
    kernel does with them where every row's history lies in its own row."""
    from bench.self_attention import Bench

    assert Bench(capacity=24, runs=1).own_history_difference(sentences, past, "rows") < 1e-5


@pytest.mark.parametrize(("sentences", "past"), [(1, 1), (1, 9), (3, 20)])
def test_attention_over_a_gathered_cache_is_the_kernels(sentences: int, past: int) -> None:
    """bench/self_attention.py's gather_mha variant (the past's rows copied to the rows that continue
    them, then MultiHeadAttention) computes what the kernel does through the indirection."""
    from bench.self_attention import Bench

    assert Bench(capacity=24, runs=1).gather_mha_difference(sentences, past) < 1e-5


def test_fused_products_take_one_node_each_and_move_with_the_batch(exported_int8: Path, tmp_path: Path) -> None:
    """bench/fused_products.py: each per-row int8 product becomes one node that computes nearly what
    its chain did; and, why the runtime does not serve it, a sentence's states then move with the
    sentences encoded beside it, where the per-row graphs' do not."""
    import onnx

    from bench.fused_products import write_fused
    from service.runtime.sessions import OnnxModel

    out = tmp_path / "fused"
    counts = write_fused(exported_int8, out)
    assert min(counts.values()) > 0
    for name in counts:
        ops = {node.op_type for node in onnx.load(str(out / name), load_external_data=False).graph.node}
        assert "DynamicQuantizeMatMul" in ops and not ops & {"MatMulIntegerToFloat", "QuantizeLinear", "Abs"}

    per_row, fused = OnnxModel(exported_int8, 1), OnnxModel(out, 1)
    rng = np.random.default_rng(0)
    sentence = rng.integers(10, 200, (1, 9))
    partners = [rng.integers(10, 200, (1, 9)) for _ in range(4)]
    mask = np.ones((2, 9), np.int64)

    def states(model: OnnxModel, ids: np.ndarray) -> np.ndarray:
        return model.encode(ids, mask[: len(ids)]).hidden[0]

    alone = states(per_row, sentence)
    fused_alone = states(fused, sentence)
    assert np.abs(fused_alone - alone).max() < 0.1 * np.abs(alone).max()
    moved = 0
    for partner in partners:
        batch = np.concatenate([sentence, partner])
        assert np.array_equal(states(per_row, batch), alone)
        moved += not np.array_equal(states(fused, batch), fused_alone)
    assert moved > 0


def test_per_sentence_products_give_a_sentence_in_a_batch_what_the_fused_step_gives_it_alone(
    exported_int8: Path, tmp_path: Path
) -> None:
    """bench/fused_products.py --per-sentence: a decoder step that scales each sentence's rows as the
    fused node scales a run gives every sentence of a batch, to the bit, what the fused step gives
    that sentence alone, padding and beams' histories included; the fused step itself moves with
    the batch, which is why a batch could not run it."""
    from bench.fused_products import write_per_sentence
    from service.runtime.sessions import OnnxModel

    alone_dir, batch_dir = tmp_path / "alone", tmp_path / "batch"
    assert write_per_sentence(exported_int8, alone_dir, batch_dir) > 0
    fused, per_sentence = OnnxModel(alone_dir, 1), OnnxModel(batch_dir, 1)
    m = fused.manifest
    rng = np.random.default_rng(1)
    sentences, beams, past, width = 3, 4, 3, 8
    ids = rng.integers(10, 200, (sentences, width))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    shape = (2 * m.decoder_layers, sentences * beams, m.n_heads, past, m.head_dim)
    history = rng.standard_normal(shape).astype(np.float32)
    slots = rng.integers(0, beams, (sentences, beams, past)).astype(np.int32)
    last = rng.integers(10, 200, (sentences * beams, 1))

    def step(model: OnnxModel, chosen: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        rows = np.concatenate([np.arange(s * beams, (s + 1) * beams) for s in chosen])
        cache = model.new_cache(len(chosen), past + 1, beams)
        cache.reorder(np.repeat(np.arange(len(chosen)), beams))
        for buffer, values in zip(cache.buffers, history, strict=True):
            buffer[:, :, :past] = values[rows]
        cache.indirection[:, :, :past] = slots[chosen]
        cache.length = past
        cross = model.encode(ids[chosen], mask[chosen]).cross
        log_probs = model.decode_step(last[rows], mask[chosen], cache, cross)
        return log_probs, [buffer[:, :, past].copy() for buffer in cache.buffers]

    together, written = step(per_sentence, list(range(sentences)))
    for s in range(sentences):
        rows = slice(s * beams, (s + 1) * beams)
        alone, written_alone = step(fused, [s])
        assert np.array_equal(together[rows], alone)
        assert all(np.array_equal(a[rows], b) for a, b in zip(written, written_alone, strict=True))
    fused_together, _ = step(fused, list(range(sentences)))
    assert not np.array_equal(fused_together, together)


@pytest.mark.parametrize("route", ["native", "libretranslate"])
def test_request_stages_cover_a_request_from_entry_to_exit(tmp_path: Path, route: str) -> None:
    """bench/request_stages.py stamps the server where a request passes, on either API's route; the
    stages chain without a gap or an overlap, so that they add up to the server's whole time, and
    the search is the model's."""
    from bench.common import service_connection
    from bench.request_stages import STAGES, stamped_requests
    from service.api.launcher import live_server

    stamps = tmp_path / "stamps.jsonl"
    stamps.touch()
    script = Path(__file__).resolve().parent.parent / "bench" / "request_stages.py"
    env = {"MTSERVE_THREADS": "1", "MTSERVE_LOG_LEVEL": "warning"}
    # Long enough (19 and 23 pieces, within a search on the loop's 32) that the search outlasts
    # whatever a busy machine's scheduler holds any other stage for.
    texts = [
        "Three children in colorful jackets are building a large snowman in front of a small wooden house.",
        "A man in a blue shirt and a woman in a red dress walk their two dogs along the beach at sunset.",
    ]
    arguments = [str(script), "--serve", str(stamps), "--route", route]
    with live_server(env=env, log_dir=tmp_path, arguments=arguments) as server:
        first, second = service_connection(server.url), service_connection(server.url)
        try:
            stamped_requests(first, texts[:1], stamps, "en", "fr", route)  # the first request's one-time work
            requests = stamped_requests(first, texts, stamps, "en", "fr", route)  # the only client: on the loop
            time.sleep(0.05)  # past the wait for the first client's return (service/api/scheduler.py)
            requests += stamped_requests(second, texts, stamps, "en", "fr", route)  # two clients: a worker thread
        finally:
            first.close()
            second.close()
    records = [json.loads(line) for line in stamps.read_text().splitlines()][1:]
    for record, stages in zip(records, requests, strict=True):
        chain = [first for _, first, _ in STAGES] + [STAGES[-1][2]]
        assert [record[name] for name in chain] == sorted(record[name] for name in chain)
        assert sum(stages[name] for name, _, _ in STAGES) == pytest.approx((record["exit"] - record["entry"]) / 1000)
        assert stages["client"] > 0
    # The search is the longest stage of a typical request: by the median over the four, which one
    # request whose other stage a busy machine's scheduler held cannot move.
    medians = {name: statistics.median(stages[name] for stages in requests) for name, _, _ in STAGES}
    assert max(medians, key=medians.__getitem__) == "search", medians


def test_perturbed_copies_move_every_product_weight_within_its_share_of_a_step(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """bench/perturbed_bleu.py's claim rests on the noise: at most share/2 of each output's int8 step,
    on every encoder and decoder product, different per seed, and nothing else moved."""
    original, _ = load_model_dir(tiny_model_dir)
    copies = {}
    for seed in (1, 2):
        perturbed_copy(tiny_model_dir, tmp_path / str(seed), 0.5, seed)
        copies[seed] = load_model_dir(tmp_path / str(seed))[0].state_dict()
    for name, module in original.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[0] not in ("encoder", "decoder"):
            continue
        weight = module.weight.detach()
        step = weight.abs().amax(dim=1, keepdim=True) / WEIGHT_MAX
        moved = copies[1][f"{name}.weight"] - weight
        assert (moved.abs() <= 0.25 * step + 1e-3 * weight.abs() + 1e-6).all()  # fp16 storage rounds a little
        assert moved.abs().mean() > 0.05 * step.mean()
        assert not torch.equal(copies[1][f"{name}.weight"], copies[2][f"{name}.weight"])
    for key, value in original.state_dict().items():
        if not (key.endswith(".weight") and key.split(".")[0] in ("encoder", "decoder") and value.dim() == 2):
            assert torch.equal(copies[1][key], value.half().float()), key


def test_a_benchmarks_model_in_its_work_directory_is_made_again_once_what_made_it_changes(tmp_path: Path) -> None:
    checkpoint, made = tmp_path / "checkpoint", tmp_path / "int8"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(b"weights")
    made.mkdir()
    (made / "manifest.json").write_text("{}")
    digest = made_from(checkpoint, "int8")
    assert not reusable(made, digest, "manifest.json") and not made.exists()  # an earlier run's, unmarked
    made.mkdir()
    (made / "manifest.json").write_text("{}")
    mark_made(made, digest)
    assert reusable(made, digest, "manifest.json")
    assert made_from(checkpoint, "fp32") != digest
    (checkpoint / "model.pt").write_bytes(b"retrained")
    makers_digest.cache_clear()
    assert not reusable(made, made_from(checkpoint, "int8"), "manifest.json") and not made.exists()


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_the_packing_benchmark_times_one_product_both_ways(precision: str) -> None:
    """bench/output_packing.py's two sessions, the weight an initializer and the weight an input,
    compute the same product: what it times apart is onnxruntime's packing alone."""
    from bench.output_packing import _inputs, _product

    weight, feeds = _inputs(np.random.default_rng(0), 5, 40, precision)
    once = np.asarray(_product(weight, constant=True).run(["y"], feeds)[0])
    each = np.asarray(_product(weight, constant=False).run(["y"], {**feeds, "w": weight})[0])
    if precision == "int8":
        expected = (feeds["a"].astype(np.int64) - 128) @ weight.astype(np.int64) * 0.01
    else:
        expected = feeds["a"].astype(np.float64) @ weight.astype(np.float64)
    np.testing.assert_array_equal(once, each)
    np.testing.assert_allclose(once, expected, rtol=1e-5, atol=1e-4)


def test_each_engine_decodes_in_a_process_of_its_own_what_it_decodes_here(
    tiny_model_dir: Path, exported_int8: Path, sentences: list[str], tmp_path: Path
) -> None:
    """bench/engines.py runs every engine in a worker process of its own (the latency issue's method,
    bench/engine_workers.py): a worker decodes the job's batches as the engine does in this process,
    round after round, one worker at a time, and times itself."""
    import argparse

    from bench.common import runtime_streams
    from bench.engine_workers import interleaved_rounds, started, write_job
    from bench.engines import _worker_command
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator, batches_by_length

    _, sp = load_model_dir(tiny_model_dir)
    sources = [[*ids, EOS_ID] for ids in sp.encode(sentences[:10])]
    groups = batches_by_length([len(s) for s in sources], 60, 2)
    assert len(groups) > 2
    write_job(tmp_path, sources, groups)
    (tmp_path / "int8").symlink_to(exported_int8)
    batches = [[sources[i] for i in group] for group in groups]
    translator = Translator.load(exported_int8, 2)
    by_runtime = runtime_streams(translator, "fr", DecodeOptions(beam_size=3), 2)(batches)
    model, _ = load_model_dir(tiny_model_dir)
    with torch.no_grad():
        by_torch = [[h[0].tokens for h in beam_search(model, batch, TAG["fr"], beam_size=3)] for batch in batches]
    expected = {"runtime": by_runtime, "torch": by_torch}
    args = argparse.Namespace(model=tiny_model_dir, work=tmp_path, threads=2, streams=2, batch_tokens=60)
    configs = {"runtime": "int8", "torch": "fp32"}
    commands = {engine: _worker_command(args, engine, precision, 3) for engine, precision in configs.items()}
    with started(commands) as workers:
        order = []
        for round_index, ran in interleaved_rounds(workers, 2):
            for engine, (seconds, outputs) in ran.items():
                order.append((round_index, engine))
                assert seconds > 0
                for group, batch_out in zip(groups, expected[engine], strict=True):
                    assert [outputs[i] for i in group] == batch_out, engine
    assert order == [(0, "runtime"), (0, "torch"), (1, "runtime"), (1, "torch")]


def test_a_worker_decodes_the_whole_job_as_often_as_its_warm_up_asks_before_it_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CTranslate2 runs its first pass over the 1,000 sentences slower than its later ones: each
    engine decodes every batch `warmup_passes` times before its timed rounds."""
    import io

    from bench.engine_workers import serve, write_job

    sources = [[5, 6, 2], [7, 2], [8, 9, 10, 2]]
    groups = [[1], [0, 2]]
    with pytest.raises(ValueError, match="warmup_passes"):
        write_job(tmp_path, sources, groups, -1)
    write_job(tmp_path, sources, groups, 2)
    calls: list[int] = []

    def decode_all(batches: list[list[list[int]]]) -> list[list[list[int]]]:
        calls.append(len(batches))
        return [[s[:1] for s in batch] for batch in batches]

    monkeypatch.setattr("sys.stdin", io.StringIO("run\n"))
    serve(tmp_path, decode_all)
    lines = capsys.readouterr().out.splitlines()
    assert calls == [1, 2, 2, 2]  # the first batch, two warm-up passes, one timed round
    assert lines[0] == "ready" and len(lines) == 2
    assert json.loads(lines[1])["outputs"] == [[5], [7], [8]]


def test_a_bleu_difference_is_significant_where_most_sentences_move_one_way() -> None:
    from model.evaluate import paired_bootstrap_p

    words = [
        "a",
        "man",
        "woman",
        "dog",
        "cat",
        "runs",
        "sits",
        "red",
        "blue",
        "big",
        "small",
        "on",
        "in",
        "the",
        "park",
        "street",
        "water",
        "ball",
    ]
    rng = np.random.default_rng(0)
    references = [" ".join(rng.choice(words, 9)) for _ in range(200)]
    baseline = [" ".join(r.split()[:7]) for r in references]  # each loses its last two words
    better = references[:150] + baseline[150:]  # whole where three in four sentences are
    # whole in 10 sentences and two words shorter in 10 others: the difference is which 20 were drawn
    mixed = references[:10] + [" ".join(r.split()[:5]) for r in references[10:20]] + baseline[20:]
    assert paired_bootstrap_p(better, baseline, references) < 0.01
    assert paired_bootstrap_p(mixed, baseline, references) > 0.3


def test_precision_bleu_compares_with_the_first_models_translations_saved_by_another_run(
    exported: Path, exported_int8: Path, tiny_data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """--save there and --baseline here (an emulated CPU's run against the native one's, the first
    model's translations read rather than made) report what one run of both models reports; a saved
    file that does not fit the run is refused by name."""
    from bench import precision_bleu

    def rows(*extra: str) -> list[dict[str, object]]:
        argv = ["precision_bleu.py", "--model", str(exported), str(exported_int8), "--threads", "1",
                "--data-dir", str(tiny_data_dir), "--directions", "en-fr", *extra]  # fmt: skip
        monkeypatch.setattr("sys.argv", argv)
        precision_bleu.main()
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    saved = tmp_path / "saved"
    together = rows("--save", str(saved))
    assert [r["direction"] for r in together] == ["en-fr", "en-fr"] and together[1]["sentences"] == 20
    read, again = rows("--baseline", str(saved))
    assert again == together[1]
    made_here = {"cpu", "vnni", "int8_kernel"}
    assert read == {**{k: v for k, v in together[0].items() if k not in made_here}, "read_from": str(saved)}
    first = saved / f"{exported.name}.test2016.en-fr.jsonl"
    first.write_text("".join(first.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(SystemExit):
        rows("--baseline", str(saved))
    assert f"{first} holds 19 lines, where this run translates 20 sentences" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        rows("--directions", "de-en")
    assert "has no de-en; it has en-fr, fr-en" in capsys.readouterr().err


def test_the_graph_clock_times_every_step_of_a_translation_once_cut_or_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/graph_clock.py counts one encoder run and one decoder call a step, as many whether the
    step runs cut into segments (their runs not counted apart) or whole, and stops timing after."""
    from bench.graph_clock import timed_runs
    from service.manifest import DEFAULT_MODEL_DIR
    from service.runtime import direct_run
    from service.runtime.beam import DecodeOptions
    from service.runtime.translator import Translator

    runner, steps = direct_run.binding_runner, {}
    for attending in ("self", "on", "off"):
        monkeypatch.setenv("MTSERVE_HOST_ATTENTION", attending)
        translator = Translator.load(DEFAULT_MODEL_DIR, 1)
        source = translator.model.tokenizer.encode("Two dogs play in the snow.")
        with timed_runs() as (encoder, decoder):
            translator.search([source], ["fr"], DecodeOptions(beam_size=5))
        assert direct_run.binding_runner is runner
        assert encoder.calls == 1 and decoder.seconds > 0
        steps[attending] = decoder.calls
    assert steps["self"] == steps["on"] == steps["off"] > 3


@pytest.mark.parametrize("attending", ["on", "off"])
def test_the_step_parts_bench_times_each_segment_and_kernel_of_a_step(
    monkeypatch: pytest.MonkeyPatch, attending: str
) -> None:
    """bench/step_parts.py times every segment of a step cut at both kinds of attention and the host's
    kernels once a layer, a whole step's run alone, and leaves the runtime's runs untimed after."""
    from bench import step_parts
    from service.runtime import direct_run, native

    if native.common_step is None:
        pytest.skip(native.NOT_BUILT)
    monkeypatch.setenv("MTSERVE_HOST_ATTENTION", attending)
    run = direct_run.direct_run
    args = step_parts.parser().parse_args(["--rows", "10", "--past", "4", "--source", "16", "--steps", "3"])
    row = step_parts.step_parts(args)
    assert direct_run.direct_run is run
    parts = row["parts_ms"]
    assert isinstance(parts, dict) and parts["select"] > 0
    assert isinstance(row["step_ms"], float) and row["step_ms"] >= parts["select"]
    if attending == "off":
        assert set(parts) == {"select"} and "self_attention_ms" not in row
        return
    segments = sorted(name for name in parts if name.startswith("segment"))
    assert segments == [f"segment {i}" for i in range(7)]  # the committed model's 3 layers, cut twice each
    assert all(parts[name] > 0 for name in segments)
    self_ms, cross_ms = row["self_attention_ms"], row["cross_attention_ms"]
    assert isinstance(self_ms, float) and isinstance(cross_ms, float) and self_ms > 0 and cross_ms > 0
