"""Two exact rewrites of a converted LiteRT flatbuffer: fold constants, store int8 kernels.

TensorFlow's converter leaves ``float32(q) * scale`` of an int8 kernel
(``training.quantize.Int8Conv``) as CAST, MUL and TRANSPOSE operators that run
on every call: it does not fold a constant whose result is much larger than its
inputs. That keeps the file small but makes the kernels dynamic, so XNNPACK
cannot prepare them and the model runs about four times slower.

``fold_constants`` evaluates every CAST, MUL, TRANSPOSE and RESHAPE whose inputs
are all constants, in numpy (the same IEEE float32 operations). ``store_int8``
then takes each float32 kernel of a convolution, depthwise convolution or fully
connected layer that is *exactly* ``float32(q) * scale`` for int8 ``q`` and one
scale per output channel, and stores ``q`` and the scales behind a DEQUANTIZE
operator, which LiteRT evaluates once, when the model is prepared. A kernel
that is not exactly of that form stays float32: neither rewrite changes a
single output bit. ``shrink`` applies both.
"""

from __future__ import annotations

from collections.abc import Callable

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

Op = schema.BuiltinOperator
TensorType = schema.TensorType
NUMPY_TYPES = {
    TensorType.FLOAT32: np.float32,
    TensorType.INT8: np.int8,
    TensorType.INT32: np.int32,
    TensorType.INT64: np.int64,
}
FOLDED: dict[int, Callable[[list[np.ndarray], type], np.ndarray]] = {
    Op.CAST: lambda args, dtype: args[0].astype(dtype),
    Op.MUL: lambda args, dtype: np.multiply(args[0], args[1], dtype=dtype),
    Op.TRANSPOSE: lambda args, dtype: np.transpose(args[0], args[1]),
    Op.RESHAPE: lambda args, dtype: args[0],  # reshaped to the output tensor's shape below
}
# the kernel is an operator's second input; its output channels lie on this axis
KERNEL_AXIS = {Op.CONV_2D: 0, Op.DEPTHWISE_CONV_2D: 3, Op.FULLY_CONNECTED: 0}
INT8_MAX = 127
DEQUANTIZE_PER_CHANNEL_VERSION = 5


def shrink(content: bytes, int8: bool = True) -> bytes:
    """``content`` with constants folded and (unless ``int8`` is False) exact int8
    kernels stored as int8."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    fold_constants(model)
    if int8:
        store_int8(model)
    builder = flatbuffers.Builder(len(content) // 2)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def operator_counts(content: bytes) -> dict[str, int]:
    """How many operators of each type the flatbuffer's graphs hold, by name."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    names = {value: name for name, value in vars(Op).items() if not name.startswith("_")}
    counts: dict[str, int] = {}
    for graph in model.subgraphs:
        for op in graph.operators:
            name = names[_code(model, op)]
            counts[name] = counts.get(name, 0) + 1
    return counts


def _code(model: schema.ModelT, op: schema.OperatorT) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _constant(model: schema.ModelT, tensor: schema.TensorT) -> np.ndarray | None:
    """A tensor's constant value, or None when it is computed (or of a type not handled)."""
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0 or tensor.type not in NUMPY_TYPES:
        return None
    raw = np.asarray(data, np.uint8).tobytes()
    return np.frombuffer(raw, NUMPY_TYPES[tensor.type]).reshape(tensor.shape)


def _set_constant(model: schema.ModelT, tensor: schema.TensorT, value: np.ndarray) -> None:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


def fold_constants(model: schema.ModelT) -> int:
    """Replace operators of ``FOLDED`` types with all-constant inputs by their results,
    until none is left; return how many were folded."""
    folded = 0
    for graph in model.subgraphs:
        changed = True
        while changed:
            changed, kept = False, []
            for op in graph.operators:
                fold = FOLDED.get(_code(model, op))
                if fold is None or len(op.outputs) != 1:  # (some operators have no output)
                    kept.append(op)
                    continue
                out = graph.tensors[op.outputs[0]]
                tensors = [graph.tensors[i] for i in op.inputs if i >= 0]
                args = [_constant(model, t) for t in tensors]
                activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
                if (
                    out.type not in NUMPY_TYPES
                    or activation
                    or any(arg is None for arg in args)
                    # quantised or variable tensors are not plain numbers to fold
                    or any(_quantized(t) or t.isVariable for t in [*tensors, out])
                ):
                    kept.append(op)
                    continue
                value = fold(args, NUMPY_TYPES[out.type]).reshape(out.shape)
                _set_constant(model, out, value.astype(NUMPY_TYPES[out.type], copy=False))
                changed, folded = True, folded + 1
            graph.operators = kept
    _drop_unused(model)
    return folded


def _quantized(tensor: schema.TensorT) -> bool:
    scale = None if tensor.quantization is None else tensor.quantization.scale
    return scale is not None and len(scale) > 0


def exact_int8(kernel: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(q, scales)`` with ``float32(q) * scale == kernel`` bit for bit along ``axis``,
    where each channel's largest ``|q|`` is 127 (as ``training.quantize`` makes
    them), or None if the kernel is not of that form."""
    rows = np.moveaxis(kernel, axis, 0)
    flat = rows.reshape(len(rows), -1)
    qs, scales = np.zeros(flat.shape, np.int8), np.ones(len(flat), np.float32)
    for c, row in enumerate(flat):
        largest = np.float32(np.max(np.abs(row)))
        if largest == 0:
            continue
        # the scale that was used gives largest == float32(127 * scale): try its neighbours
        guess = np.float32(largest / np.float32(INT8_MAX))
        up, down = np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(0))
        for scale in (guess, up, down):
            q = np.round(row.astype(np.float64) / np.float64(scale))
            restored = q.astype(np.float32) * scale
            # compared bit for bit (a -0.0 weight would come back as +0.0)
            if np.max(np.abs(q)) <= INT8_MAX and np.array_equal(
                restored.view(np.uint32), row.view(np.uint32)
            ):
                qs[c], scales[c] = q, scale
                break
        else:
            return None
    return np.moveaxis(qs.reshape(rows.shape), 0, axis), scales


def store_int8(model: schema.ModelT) -> int:
    """Store every exact int8 kernel as int8 + scales behind a DEQUANTIZE operator;
    return how many were stored."""
    codes = len(model.operatorCodes)
    dequantize = _opcode(model, Op.DEQUANTIZE)
    stored = 0
    for graph in model.subgraphs:
        done: set[int] = set()
        added = []
        for op in graph.operators:
            axis = KERNEL_AXIS.get(_code(model, op))
            if axis is None or len(op.inputs) < 2 or op.inputs[1] in done:
                continue
            kernel_tensor = graph.tensors[op.inputs[1]]
            kernel = _constant(model, kernel_tensor)
            if kernel is None or kernel_tensor.type != TensorType.FLOAT32:
                continue
            exact = exact_int8(kernel, axis)
            if exact is None:
                continue
            q, scales = exact
            int8 = schema.TensorT()
            int8.shape, int8.type = list(kernel_tensor.shape), TensorType.INT8
            int8.name = _name(kernel_tensor.name) + "/int8"
            int8.quantization = schema.QuantizationParametersT()
            int8.quantization.scale = scales.tolist()
            int8.quantization.zeroPoint = [0] * len(scales)
            int8.quantization.quantizedDimension = axis
            _set_constant(model, int8, q)
            graph.tensors.append(int8)
            kernel_tensor.buffer = 0  # buffer 0 is the empty one: now computed
            op_dequantize = schema.OperatorT()
            op_dequantize.opcodeIndex = dequantize
            op_dequantize.inputs, op_dequantize.outputs = [len(graph.tensors) - 1], [op.inputs[1]]
            added.append(op_dequantize)
            done.add(op.inputs[1])
        graph.operators = added + graph.operators  # constants first: still in order
        stored += len(added)
    if not stored:
        del model.operatorCodes[codes:]  # the DEQUANTIZE code, if _opcode added it
    else:  # TFLite's operator version of a per-channel int8 DEQUANTIZE
        code = model.operatorCodes[dequantize]
        code.version = max(code.version, DEQUANTIZE_PER_CHANNEL_VERSION)
    _drop_unused(model)
    return stored


def _name(name: bytes | str | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "kernel")


def _opcode(model: schema.ModelT, builtin: int) -> int:
    """The index of an operator code, appended to the model's codes if absent."""
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = builtin
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _drop_unused(model: schema.ModelT) -> None:
    """Remove tensors no operator, graph input/output or signature uses, and empty the
    buffers neither a tensor nor the metadata uses (their indices stay)."""
    for index, graph in enumerate(model.subgraphs):
        signatures = [s for s in model.signatureDefs or [] if s.subgraphIndex == index]
        maps = [m for s in signatures for m in [*(s.inputs or []), *(s.outputs or [])]]
        used = set(graph.inputs) | set(graph.outputs) | {m.tensorIndex for m in maps}
        for op in graph.operators:
            used |= {i for i in [*op.inputs, *(op.intermediates or [])] if i >= 0}
            used |= set(op.outputs)
        new = {old: position for position, old in enumerate(sorted(used))}
        graph.tensors = [graph.tensors[i] for i in sorted(used)]
        graph.inputs = [new[i] for i in graph.inputs]
        graph.outputs = [new[i] for i in graph.outputs]
        for op in graph.operators:
            op.inputs = [new[i] if i >= 0 else -1 for i in op.inputs]
            op.outputs = [new[i] for i in op.outputs]
            if op.intermediates is not None and len(op.intermediates):
                op.intermediates = [new[i] if i >= 0 else -1 for i in op.intermediates]
        for m in maps:
            m.tensorIndex = new[m.tensorIndex]
    referenced = {t.buffer for graph in model.subgraphs for t in graph.tensors}
    # metadata (the minimum runtime version, conversion details) lives in buffers too
    referenced |= {m.buffer for m in model.metadata or []}
    referenced |= set(model.metadataBuffer if model.metadataBuffer is not None else [])
    for index, buffer in enumerate(model.buffers):
        if index and index not in referenced:
            buffer.data = None
