"""The decoder step as its segments' sessions with the host's attention between them
(step_segments.py), behind the few methods of an InferenceSession and its IOBinding that the
runtime calls: a step is bound once and run again as a whole graph is (sessions.py).

A binding routes each input to the segments that read it and each output to the segment that makes
it. The cache's buffers, its length, the rows' beams and the indirection go to the host's
self-attention kernel: the step's present key and value are its past ones, written in place. The
encoder's keys and values and the source mask go to its cross-attention kernel (the exact one where
the cut found that it gives the node's bits), read where the runtime bound them. The tensors that
cross a cut live in arrays of the binding's own, made at the first run of each shape, when the first
segment's outputs give their shapes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from service.graphs import BEAM_WIDTH, CACHE_INDIRECTION, PAST_LENGTH
from service.runtime import direct_run, native
from service.runtime.step_segments import AttentionCut, CrossAttentionCut, GraphArg, StepSegments

_KERNEL_INPUTS = (PAST_LENGTH, BEAM_WIDTH, CACHE_INDIRECTION)


class _Crossing(NamedTuple):
    """A tensor between segments: its element type and shape, the first axis the rows' where
    `by_row` (else a shape of its own, as a shape tensor has)."""

    dtype: np.dtype[Any]
    by_row: bool
    shape: tuple[int, ...]


class SegmentedSession:
    """The step's segments, each a session that `open_segment` makes of its serialized graph."""

    def __init__(self, segments: StepSegments, open_segment: Callable[[bytes], ort.InferenceSession]) -> None:
        if native.common_step is None:
            raise RuntimeError(native.NOT_BUILT)
        self.attend = native.common_step.self_attention  # the module's, whatever tests make of `native` later
        self.cross_attend = native.common_step.cross_attention
        self.exact_kernel = native.common_step.EXACT_CROSS_KERNEL
        self.segments = segments
        self.sessions = [open_segment(graph) for graph in segments.graphs]
        self.readers: dict[str, list[int]] = {}  # each input's segments
        self.makers: dict[str, int] = {}  # each output's segment
        for index, session in enumerate(self.sessions):
            for arg in session.get_inputs():
                self.readers.setdefault(arg.name, []).append(index)
            for arg in session.get_outputs():
                self.makers[arg.name] = index
        cuts = segments.cuts
        selves = [(i, cut) for i, cut in enumerate(cuts) if isinstance(cut, AttentionCut)]
        self.pasts = {name: (i, kind) for i, cut in selves for kind, name in enumerate(cut.past)}
        self.presents = {name: (i, kind) for i, cut in selves for kind, name in enumerate(cut.present)}
        # the inputs the kernels read: the self-attention's beams and length, the cross-attention's
        crosses = [cut for cut in cuts if isinstance(cut, CrossAttentionCut)]
        self.kernel_inputs = frozenset(_KERNEL_INPUTS).union(
            name for cut in crosses for name in (cut.key, cut.value, cut.mask) if name
        )
        # each segment's outputs that a later segment or the cut after it reads
        self.crossing = [
            [arg.name for arg in session.get_outputs()
             if arg.name in self.readers or (i < len(cuts) and arg.name in cuts[i].made)]
            for i, session in enumerate(self.sessions)
        ]  # fmt: skip
        self.layout: dict[str, _Crossing] | None = None  # learnt at the first run (SegmentedBinding)
        self.declared_inputs = frozenset(segments.inputs)

    def get_inputs(self) -> list[GraphArg]:
        return [GraphArg(name) for name in self.segments.inputs]

    def get_outputs(self) -> list[GraphArg]:
        return [GraphArg(name) for name in self.segments.outputs]

    def io_binding(self) -> SegmentedBinding:
        return SegmentedBinding(self)

    def run_with_iobinding(self, binding: SegmentedBinding, run_options: ort.RunOptions | None = None) -> None:
        binding.run(run_options)


class SegmentedBinding:
    """A step's binding across its segments (SegmentedSession)."""

    def __init__(self, session: SegmentedSession) -> None:
        self._session = session
        self._bindings = [s.io_binding() for s in session.sessions]
        self._caches: list[list[np.ndarray | None]] = [[None, None] for _ in session.segments.cuts]
        self._kernel_inputs: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}  # each input's shape as last bound
        self._outputs: dict[str, tuple[bool, tuple[Any, ...]]] = {}  # the step's outputs as bound: (as a value, how)
        self._crossing: dict[str, np.ndarray] = {}
        self._runs: list[Callable[[], object]] = []  # each segment's run and its cut's, in order; made by `_prepare`

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self._check_input(name)
        if name in self._session.kernel_inputs:
            if self._kernel_inputs.get(name) is not array:
                self._runs = []  # the kernel's runs hold the arrays they read
            self._kernel_inputs[name] = array
        self._changed(name, array.shape)
        for index in self._session.readers.get(name, ()):
            self._bindings[index].bind_cpu_input(name, array)

    def bind_ortvalue_input(self, name: str, value: ort.OrtValue) -> None:
        self._check_input(name)
        self._changed(name, tuple(value.shape()))
        if name in self._session.pasts:
            cut, kind = self._session.pasts[name]
            cache = self._caches[cut][kind]
            if cache is None or cache.ctypes.data != value.data_ptr() or cache.shape != tuple(value.shape()):
                self._caches[cut][kind] = value.numpy()  # the cache's own buffer (a CPU value's array shares it)
                self._runs = []
            return
        for index in self._session.readers.get(name, ()):
            self._bindings[index].bind_ortvalue_input(name, value)

    def bind_output(self, name: str, *how: Any) -> None:
        if name in self._session.presents:
            raise ValueError(f"{name} is written in place, into its past's buffer: bind it with bind_ortvalue_output")
        self._outputs[name] = (False, how)
        self._bindings[self._session.makers[name]].bind_output(name, *how)

    def bind_ortvalue_output(self, name: str, value: ort.OrtValue) -> None:
        if name in self._session.presents:
            cut, kind = self._session.presents[name]
            past = self._caches[cut][kind]
            if past is None or value.data_ptr() != past.ctypes.data:
                raise ValueError(f"{name} must be bound to the buffer bound as its past, after it")
            return
        self._outputs[name] = (True, (value,))
        self._bindings[self._session.makers[name]].bind_ortvalue_output(name, value)

    def _check_input(self, name: str) -> None:
        if name not in self._session.declared_inputs:
            raise ValueError(f"the decoder step has no input {name!r}")

    def run(self, run_options: ort.RunOptions | None = None) -> None:
        if not self._runs:
            self._prepare(run_options)
            try:
                self._run()
            except RuntimeError:  # onnxruntime's: a crossing tensor's shape other than learnt (rows then sentences)
                self._session.layout = None
                self._prepare(run_options)
                self._run()
            return
        self._run()

    def _run(self) -> None:
        for run in self._runs:
            run()

    def _changed(self, name: str, shape: Sequence[int]) -> None:
        """A new shape of an input may give the crossing tensors new shapes: they are made again."""
        if self._shapes.get(name) != tuple(shape):
            self._shapes[name] = tuple(shape)
            self._runs = []

    def _prepare(self, run_options: ort.RunOptions | None) -> None:
        """The crossing tensors' arrays at the bound shapes, bound where they are made and read, and
        the runs in order."""
        session, cuts = self._session, self._session.segments.cuts
        if session.layout is None:
            session.layout = self._learn(run_options)
        rows = self._shapes["input_ids"][0]
        for name, crossing in session.layout.items():
            shape = (rows, *crossing.shape) if crossing.by_row else crossing.shape
            array = self._crossing[name] = np.empty(shape, crossing.dtype)
            self._bindings[session.makers[name]].bind_output(
                name, "cpu", 0, array.dtype.type, list(array.shape), array.ctypes.data
            )
            for reader in session.readers.get(name, ()):
                self._bindings[reader].bind_cpu_input(name, array)
        runs: list[Callable[[], object]] = []
        for index, (segment, binding) in enumerate(zip(session.sessions, self._bindings, strict=True)):
            runs.append(direct_run.direct_run(segment, binding, run_options))
            if index < len(cuts):
                runs.append(self._cut_run(index, self._crossing))
        self._runs = runs

    def _cut_run(self, index: int, arrays: dict[str, np.ndarray]) -> Callable[[], object]:
        """Cut `index`'s call to the host's kernel over the crossing `arrays` (its inputs there): its
        output is made there too and bound as the next segments' input."""
        session, cut = self._session, self._session.segments.cuts[index]
        kernel = self._kernel_inputs
        if isinstance(cut, CrossAttentionCut):
            return self._cross_run(cut, arrays)
        out = arrays[cut.output] = np.empty_like(arrays[cut.query])
        self._bind_made(cut.output, out)
        key_cache, value_cache = self._caches[index]
        if key_cache is None or value_cache is None:
            raise ValueError(f"the cache of {cut.past[0]} is not bound")
        return functools.partial(
            session.attend, arrays[cut.query], arrays[cut.key], arrays[cut.value], cut.bias, key_cache, value_cache,
            kernel[CACHE_INDIRECTION], kernel[PAST_LENGTH], kernel[BEAM_WIDTH], out,
        )  # fmt: skip

    def _cross_run(self, cut: CrossAttentionCut, arrays: dict[str, np.ndarray]) -> Callable[[], object]:
        """A cross-attention cut's call: its rows' queries, the bound keys, values and mask."""
        kernel = self._kernel_inputs
        if cut.key not in kernel or cut.value not in kernel or (cut.mask and cut.mask not in kernel):
            raise ValueError(f"{cut.key}, {cut.value} and the source mask must be bound")
        keys = kernel[cut.key]
        query, (sentences, heads, _, depth) = arrays[cut.query], keys.shape
        width = heads * depth
        if query.size % (sentences * width):
            raise ValueError(f"{cut.query} holds {query.size} values, not a whole number of rows for each source")
        out = arrays[cut.output] = np.empty((sentences, query.size // (sentences * width), width), np.float32)
        self._bind_made(cut.output, out)
        mask = kernel[cut.mask] if cut.mask else None
        host = self._session.exact_kernel if cut.exact else -1  # -1: the host's widest own kernel
        return functools.partial(self._session.cross_attend, query, keys, kernel[cut.value], mask, out, host)

    def _bind_made(self, name: str, array: np.ndarray) -> None:
        """A kernel's output bound as the input of the segments that read it."""
        for reader in self._session.readers.get(name, ()):
            self._bindings[reader].bind_cpu_input(name, array)

    def _learn(self, run_options: ort.RunOptions | None) -> dict[str, _Crossing]:
        """The crossing tensors' types and shapes, from a run of each segment that makes them itself
        (its other outputs unbound meanwhile, then bound again as they were), the cuts between them
        run as in a step (they write the caches' position as the step's own run then writes it again)."""
        session, cuts = self._session, self._session.segments.cuts
        rows = self._shapes["input_ids"][0]
        layout: dict[str, _Crossing] = {}
        arrays: dict[str, np.ndarray] = {}
        for index, (segment, binding) in enumerate(zip(session.sessions, self._bindings, strict=True)):
            names = session.crossing[index]
            if not names:  # the last segment: nothing of it crosses
                continue
            binding.clear_binding_outputs()
            for name in names:
                binding.bind_output(name, "cpu")
            segment.run_with_iobinding(binding, run_options)
            for name, value in zip(names, binding.get_outputs(), strict=True):
                array = arrays[name] = np.array(value.numpy())
                by_row = array.shape[:1] == (rows,)
                layout[name] = _Crossing(array.dtype, by_row, array.shape[1:] if by_row else array.shape)
                for reader in session.readers.get(name, ()):
                    self._bindings[reader].bind_cpu_input(name, array)
            binding.clear_binding_outputs()
            for name, (as_value, how) in self._outputs.items():
                if session.makers.get(name) == index:
                    (binding.bind_ortvalue_output if as_value else binding.bind_output)(name, *how)
            if index < len(cuts):
                self._cut_run(index, arrays)()
        return layout
