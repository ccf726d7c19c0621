"""LiteRT runtime: a version folder's ``model.tflite`` run by ``ai_edge_litert``.

Nothing here imports TensorFlow or Keras: a service that serves LiteRT starts in
a fraction of a second and stays small. The model file is read once; every
interpreter runs those same bytes, so replacing the file later changes nothing
for a loaded model.

A LiteRT interpreter must not be used by two threads at once, so each concurrent
caller gets its own: interpreters wait in a pool of idle ones, and a call takes
one (creating it, ~5 ms, when none is idle) and puts it back afterwards. With
one inference thread that is one interpreter, reused by every call, including
the warm-up even when it runs in another thread. ``num_threads`` is per
interpreter (XNNPACK's thread pool).

Batch size: by default the input's batch dimension is resized to each call's
batch. ``bench/runtimes.py`` (removed; ``git show 9912218:bench/runtimes.py``) measured
it against fixed buckets (``buckets``: one
interpreter per bucket size, batches padded up to the next bucket, larger ones
split) on the shipped model, 2 cores: equal at batch 1 and 32, but on a mix of
batch sizes 1-32 resizing took 2.5 ms per image against 3.5 ms (1 thread; the
padding is wasted compute; resize + allocate take ~0.01 ms once the interpreter has seen
its largest batch) and half the memory (164 MB vs 312 MB after batch 32).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from catdog.contract import SIGNATURE


class LiteRTModel:
    """A ``.tflite`` model with a float32 [N, H, W, 3] input, run on numpy batches.

    ``infer`` returns the signature's outputs by name (``output_0`` for a model
    exported with one output; ``probabilities`` and ``ood_score`` for one with two).
    It may be called from several threads at once.
    """

    def __init__(
        self,
        content: bytes,
        threads: int = 1,
        buckets: Sequence[int] | None = None,
        where: str = "model",
    ) -> None:
        if threads < 1:
            raise ValueError(f"{where}: threads must be >= 1, got {threads}")
        self.content = content
        self.threads = threads
        self.where = where
        self.buckets = tuple(sorted(set(buckets))) if buckets else None
        if self.buckets and self.buckets[0] < 1:
            raise ValueError(f"{where}: batch buckets must be >= 1, got {self.buckets}")
        try:  # a model that does not load fails here, not on the first request
            first = Interpreter(model_content=content, num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{where}: not a loadable LiteRT model: {exc}") from exc
        signatures = list(first.get_signature_list())
        if SIGNATURE in signatures:
            self.signature = SIGNATURE
        elif len(signatures) == 1:
            self.signature = signatures[0]
        else:
            raise ValueError(f"{where}: no {SIGNATURE!r} signature (has {signatures})")
        runner = first.get_signature_runner(self.signature)
        inputs = runner.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"{where}: signature takes {len(inputs)} inputs, expected 1")
        ((self.input_name, spec),) = inputs.items()
        shape = [int(d) for d in spec["shape_signature"]]
        if spec["dtype"] != np.float32 or len(shape) != 4 or shape[0] != -1:
            raise ValueError(
                f"{where}: input is {np.dtype(spec['dtype']).name} {shape}, "
                "expected float32 [-1, H, W, 3]"
            )
        self.input_shape: tuple[int, ...] = tuple(shape[1:])
        self._input = int(spec["index"])
        outputs = runner.get_output_details()
        self.output_names: tuple[str, ...] = tuple(sorted(outputs))
        self._outputs = {name: int(d["index"]) for name, d in outputs.items()}
        del runner
        self.interpreters = 0  # created so far (one per concurrent caller, per bucket)
        self._count = threading.Lock()
        self._idle: list[_Slot] = []  # list.pop/append are atomic: no lock needed
        slot = _Slot(self)
        if self.buckets is None:
            slot.adopt(None, first, 1)  # the probe becomes the first caller's interpreter
        elif self.buckets[0] == 1:
            slot.adopt(1, first, 1)
        self._idle.append(slot)

    @classmethod
    def from_file(
        cls, path: str | Path, threads: int = 1, buckets: Sequence[int] | None = None
    ) -> LiteRTModel:
        """Read a ``.tflite`` file once and build the model from its bytes."""
        path = Path(path)
        return cls(path.read_bytes(), threads, buckets, where=str(path))

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a float32 batch [N, H, W, 3] (N >= 1)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        try:
            slot = self._idle.pop()
        except IndexError:
            slot = _Slot(self)
        try:
            if self.buckets is None:
                return slot.run(None, images)
            return self._run_buckets(slot, images)
        finally:
            self._idle.append(slot)

    def _run_buckets(self, slot: _Slot, images: np.ndarray) -> dict[str, np.ndarray]:
        assert self.buckets is not None
        largest = self.buckets[-1]
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(images), largest):
            chunk = images[start : start + largest]
            count = len(chunk)
            size = next(b for b in self.buckets if b >= count)
            if size > count:
                chunk = np.concatenate(
                    [chunk, np.zeros((size - count, *chunk.shape[1:]), np.float32)]
                )
            out = slot.run(size, chunk)
            parts.append({name: value[:count] for name, value in out.items()})
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _Slot:
    """The interpreter(s) of one concurrent caller: one, or one per batch bucket."""

    def __init__(self, model: LiteRTModel) -> None:
        self.model = model
        self._interpreters: dict[int | None, Interpreter] = {}
        self._batch: dict[int | None, int] = {}  # the batch each one is allocated for

    def adopt(self, key: int | None, interpreter: Interpreter, batch: int) -> None:
        """Use an already allocated interpreter for ``key``."""
        interpreter.allocate_tensors()
        self._interpreters[key] = interpreter
        self._batch[key] = batch
        with self.model._count:
            self.model.interpreters += 1

    def run(self, key: int | None, images: np.ndarray) -> dict[str, np.ndarray]:
        """One invoke of the interpreter for ``key`` (a bucket, or None: resized per call)."""
        model = self.model
        interpreter = self._interpreters.get(key)
        if interpreter is None:
            interpreter = Interpreter(model_content=model.content, num_threads=model.threads)
            self.adopt(key, interpreter, 1)
        if self._batch[key] != len(images):
            interpreter.resize_tensor_input(model._input, [len(images), *model.input_shape])
            interpreter.allocate_tensors()
            self._batch[key] = len(images)
        interpreter.set_tensor(model._input, images)
        interpreter.invoke()
        return {name: interpreter.get_tensor(i) for name, i in model._outputs.items()}
