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
import json

import numpy as np
import tensorflow as tf

from serving.errors import BadRequest
from tfchat.inference.sampling import SamplingParams

SAMPLING_INPUTS = {"max_new_tokens", "temperature", "top_k", "top_p", "seed"}


def _decode_value(value, dtype: tf.DType):
    """JSON value -> numpy-friendly value; strings may be {"b64": ...} (TF Serving's binary form)."""
    if dtype == tf.string:
        if isinstance(value, list):
            return [_decode_value(v, dtype) for v in value]
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        if isinstance(value, str):
            return value.encode("utf-8")
        raise BadRequest(f"expected a string, got {json.dumps(value)[:60]}")
    return value


def to_tensor(name: str, value, spec: tf.TensorSpec) -> tf.Tensor:
    try:
        array = np.array(_decode_value(value, spec.dtype), dtype=object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype)
    except BadRequest:
        raise
    except (TypeError, ValueError) as e:
        raise BadRequest(f"input '{name}': cannot convert to {spec.dtype.name} ({e})") from e
    if array.dtype == object and spec.dtype != tf.string:
        raise BadRequest(f"input '{name}': ragged or mixed values")
    if spec.dtype == tf.string and any(not isinstance(v, bytes) for v in array.reshape(-1)):
        raise BadRequest(f"input '{name}': ragged or non-string values")
    if not spec.shape.is_compatible_with(array.shape):
        raise BadRequest(f"input '{name}': shape {list(array.shape)} does not match the signature's {spec.shape}")
    return tf.constant(array, spec.dtype)


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
    return {k: to_tensor(k, v, specs[k]) for k, v in columns.items()}, "instances" in body


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
