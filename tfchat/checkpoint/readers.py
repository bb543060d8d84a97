"""Weight-file readers: safetensors (bfloat16 too) and PyTorch checkpoints without torch.

`pytorch_model.bin` is read without torch: a restricted unpickler (like
`torch.load(weights_only=True)`) accepts only tensor-rebuild helpers and
storage types, and the raw storages become numpy arrays; anything else in
the pickle (a module, a function) is refused.

Example:

>>> tensors = read_safetensors("model.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pickle
import struct
import zipfile

import numpy as np


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a .safetensors file into numpy arrays (bfloat16 is widened to float32)."""
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():
                if f.get_slice(key).get_dtype() == "BF16":
                    tensors[key] = _safetensors_bf16(path, key)  # numpy has no bfloat16
                else:
                    tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot read safetensors file ({e})") from e
    return tensors


def _safetensors_bf16(path: str, key: str) -> np.ndarray:
    # safe_open has already validated the header and offsets.
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(header_len))[key]
        begin, end = info["data_offsets"]
        f.seek(8 + header_len + begin)
        raw = np.frombuffer(f.read(end - begin), "<u2")
    return _bf16_to_f32(raw).reshape(info["shape"])


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    # bfloat16 is the top half of a float32.
    return (raw.astype(np.uint32) << 16).view(np.float32)


# Torch storage class name -> numpy dtype ("bf16" handled apart).
_TORCH_STORAGES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for `torch.FloatStorage` etc. in the pickle."""

    name: str


class _Storage:
    def __init__(self, kind: _StorageType, numel: int):
        self.kind, self.numel = kind, numel
        self.data: np.ndarray | None = None  # flat, filled from the zip entry or legacy stream

    def set_bytes(self, raw: bytes, where: str) -> None:
        dtype = _TORCH_STORAGES[self.kind.name]
        if len(raw) < self.numel * dtype.itemsize:
            raise ValueError(f"{where}: storage truncated")
        self.data = np.frombuffer(raw, dtype, count=self.numel)


@dataclasses.dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict without torch, refusing every other global."""

    def __init__(self, file, persistent_load, where: str):
        super().__init__(file)
        self._persistent_load = persistent_load
        self._where = where

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only plain tensor state dicts are accepted"
        )

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a torch.save'd state dict (zip or legacy format) into numpy, without importing torch.

    Only tensors are materialised; anything that is not a (nested) dict of
    tensors, e.g. a pickled `nn.Module`, is refused.
    """
    try:
        if zipfile.is_zipfile(path):
            state = _read_torch_zip(path)
        else:
            state = _read_torch_legacy(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"expected a state dict, got {type(state).__name__}")
        return {k: _to_numpy(v, path) for k, v in state.items() if isinstance(v, _TensorRef)}
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError, TypeError,
            AttributeError, IndexError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        msg = str(e) if str(e).startswith(path) else f"{path}: cannot read PyTorch checkpoint ({e})"
        raise ValueError(msg + "; converting it to model.safetensors also works") from e


def _read_torch_zip(path: str):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise ValueError(f"{path}: no data.pkl in the zip, not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def persistent_load(pid):
            typename, kind, key, _location, numel = pid
            if typename != "storage" or not isinstance(kind, _StorageType):
                raise pickle.UnpicklingError(f"unexpected persistent id {typename!r}")
            if key not in storages:  # tied weights share one storage
                storage = _Storage(kind, numel)
                storage.set_bytes(z.read(f"{prefix}data/{key}"), f"{path}: {prefix}data/{key}")
                storages[key] = storage
            return storages[key]

        with z.open(pkl[0]) as f:
            return _RestrictedUnpickler(f, persistent_load, path).load()


def _read_torch_legacy(path: str):
    # Pre-1.6 torch.save: pickles of magic, protocol, sys info, the object,
    # the storage keys, then each storage as int64 numel + raw bytes.
    storages: dict[str, _Storage] = {}

    def persistent_load(pid):
        typename, kind, key, _location, numel, view = pid
        if typename != "storage" or not isinstance(kind, _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {typename!r}")
        if view is not None:
            raise ValueError(f"{path}: storage views (very old torch) are not supported")
        storages.setdefault(key, _Storage(kind, numel))
        return storages[key]

    def load(f):
        return _RestrictedUnpickler(f, persistent_load, path).load()

    with open(path, "rb") as f:
        try:
            magic = load(f)
        except Exception as e:
            raise ValueError(f"{path}: not a PyTorch checkpoint") from e
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint")
        load(f)  # protocol version
        sys_info = load(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        state = load(f)
        for key in load(f):
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} has {numel} elements, expected {storage.numel}")
            storage.set_bytes(f.read(numel * _TORCH_STORAGES[storage.kind.name].itemsize), f"{path}: storage {key}")
    return state


def _to_numpy(t: _TensorRef, path: str) -> np.ndarray:
    data = t.storage.data
    if data is None:
        raise ValueError(f"{path}: tensor storage has no data")
    if any(n == 0 for n in t.size):
        out = np.zeros(t.size, data.dtype)
    else:
        # Bounds check: a crafted file must not read outside its storage.
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
        if t.offset < 0 or min(t.stride, default=0) < 0 or last >= data.size:
            raise ValueError(f"{path}: tensor reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            data[t.offset:], shape=t.size, strides=[s * data.itemsize for s in t.stride], writeable=False
        )
        out = np.array(view)
    if t.storage.kind.name == "BFloat16Storage":
        out = _bf16_to_f32(out)
    return out
