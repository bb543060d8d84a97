"""TF Serving's JSON predict format <-> tensors, as its REST API defines it.

Row format `{"instances": [{input: value, ...}, ...]}` and columnar format
`{"inputs": {input: value}}`; strings may be `{"b64": "..."}`. Outputs come
back as `{"predictions": [...]}` or `{"outputs": ...}` to match. As an
extension, the sampling inputs of `generate`/`chat`/`prefill` may be left
out: they default to the model's `SamplingParams`.

Example:

>>> import tensorflow as tf
>>> specs = {"text": tf.TensorSpec([None], tf.string)}
>>> inputs, row_format = parse_predict({"instances": ["hi"]}, specs)
>>> inputs["text"].numpy(), row_format
(array([b'hi'], dtype=object), True)
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
import tensorflow as tf

from serving.errors import BadRequest
from tfchat.inference.sampling import SamplingParams, check_sampling

SAMPLING_INPUTS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "guidance"}


def _decode_value(value, dtype: tf.DType):
    """JSON value -> numpy-friendly value; strings may be {"b64": ...} (TF Serving's binary form)."""
    if dtype == tf.string:
        if isinstance(value, list):
            return [_decode_value(v, dtype) for v in value]
        if isinstance(value, dict) and set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise BadRequest(f"invalid base64 in {json.dumps(value)[:60]}") from None
        if isinstance(value, str):
            return value.encode("utf-8")
        raise BadRequest(f"expected a string, got {json.dumps(value)[:60]}")
    return value


def to_tensor(name: str, value, spec: tf.TensorSpec) -> tf.Tensor:
    """A JSON value as a tensor of the signature's dtype; values of another kind (a float or a string for
    an int32, an int beyond int32) are refused, never rounded or wrapped."""
    dtype = spec.dtype
    if dtype == tf.string:
        array = np.array(_decode_value(value, dtype), dtype=object)
        if any(not isinstance(v, bytes) for v in array.reshape(-1)):
            raise BadRequest(f"input '{name}': ragged or non-string values")
    else:
        try:
            array = np.array(value)
        except ValueError as e:  # ragged nesting
            raise BadRequest(f"input '{name}': ragged or mixed values ({e})") from None
        kind = "integers" if dtype.is_integer else "booleans" if dtype == tf.bool else "numbers"
        accepted = {"integers": "iu", "booleans": "b", "numbers": "iuf"}[kind]
        if array.dtype.kind not in accepted:
            raise BadRequest(f"input '{name}': expected {kind} ({dtype.name}), got {json.dumps(value)[:60]}")
        if dtype.is_integer and array.size and (array.min() < dtype.min or array.max() > dtype.max):
            raise BadRequest(f"input '{name}': values must be in {dtype.min} .. {dtype.max} ({dtype.name})")
        with np.errstate(over="ignore"):
            array = array.astype(dtype.as_numpy_dtype)
        if dtype.is_floating and not np.isfinite(array).all():
            raise BadRequest(f"input '{name}': values must be finite {dtype.name} numbers")
    if not spec.shape.is_compatible_with(array.shape):
        raise BadRequest(f"input '{name}': shape {list(array.shape)} does not match the signature's {spec.shape}")
    return tf.constant(array, dtype)


def _json_value(array: np.ndarray):
    if array.dtype == object:
        def text(b):
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(b).decode()}

        return np.vectorize(text, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def sampling_columns(missing, batch: int, defaults: SamplingParams) -> dict[str, list]:
    """Values for sampling inputs a request left out (our extension of TF Serving's API), one per row.

    A default without a seed draws a fresh seed per row, as every other route does.
    """
    return {name: [getattr(defaults.resolved(), name) for _ in range(batch)] for name in missing}


def parse_predict(body, specs: dict, defaults: SamplingParams | None = None) -> tuple[dict, bool]:
    """TF Serving predict body -> ({input: tensor}, row_format); `defaults` fill missing sampling inputs."""
    defaults = defaults or SamplingParams()
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise BadRequest('request must have exactly one of "instances" (row format) or "inputs" (columnar format)')
    names = sorted(specs)
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest('"instances" must be a non-empty list')
        if all(isinstance(r, dict) and "b64" not in r for r in rows):
            keys = set(rows[0])
            if any(set(r) != keys for r in rows):
                raise BadRequest("all instances must have the same named inputs")
            columns = {k: [r[k] for r in rows] for k in keys}
        elif len(names) == 1:
            columns = {names[0]: rows}
        else:
            raise BadRequest(f"signature has inputs {names}: instances must be objects naming them")
        batch = len(rows)
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
            columns = dict(inputs)
        elif len(names) == 1:
            columns = {names[0]: inputs}
        else:
            raise BadRequest(f"signature has inputs {names}: \"inputs\" must be an object naming them")
        batch = None
    unknown = sorted(set(columns) - set(specs))
    if unknown:
        raise BadRequest(f"unknown input(s) {unknown}; signature inputs: {names}")
    missing = sorted(set(specs) - set(columns))
    if missing and set(missing) <= SAMPLING_INPUTS:
        # Our extension: sampling inputs default per row.
        first = next(iter(columns.values()), [])
        batch = batch or (len(first) if isinstance(first, list) else 1)
        columns.update(sampling_columns(missing, batch, defaults))
    elif missing:
        raise BadRequest(f"missing input(s) {missing}")
    tensors = {k: to_tensor(k, v, specs[k]) for k, v in columns.items()}
    for name in SAMPLING_INPUTS & set(tensors):  # judged as on every other route
        for value in tensors[name].numpy().reshape(-1).tolist():
            try:
                check_sampling(**{name: value})
            except ValueError as e:
                raise BadRequest(f"input '{name}': {e}") from None
    return tensors, "instances" in body


def batch_rows(inputs: dict) -> int:
    """Rows of a parsed request: the largest leading dimension of its inputs (a scalar input counts 1)."""
    return max((int(t.shape[0]) for t in inputs.values() if t.shape.rank), default=1)


def format_predict(outputs: dict, row_format: bool) -> dict:
    if not row_format:
        if len(outputs) == 1:
            return {"outputs": _json_value(next(iter(outputs.values())))}
        return {"outputs": {k: _json_value(v) for k, v in outputs.items()}}
    sizes = {v.shape[0] if v.ndim else None for v in outputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise BadRequest("outputs do not share a batch dimension; use the columnar \"inputs\" format")
    if len(outputs) == 1:
        return {"predictions": _json_value(next(iter(outputs.values())))}
    columns = {k: _json_value(v) for k, v in outputs.items()}
    return {"predictions": [{k: columns[k][i] for k in columns} for i in range(sizes.pop())]}


def spec_json(spec: tf.TensorSpec, name: str) -> dict:
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape.as_list()]
    from tensorflow.core.framework import types_pb2

    dtype = types_pb2.DataType.Name(spec.dtype.as_datatype_enum)
    return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}
