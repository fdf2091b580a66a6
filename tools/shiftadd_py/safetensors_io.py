"""Minimal, dependency-free safetensors reader/writer (numpy based).

File layout (https://github.com/huggingface/safetensors):
  8 bytes   little-endian u64 N = header length
  N bytes   UTF-8 JSON header: {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
            optional "__metadata__": {str: str}}; padded with spaces so that 8 + N is a
            multiple of 8
  rest      raw little-endian tensor bytes; offsets are relative to the start of this region
"""
import json
import os
import struct
from collections import OrderedDict

import numpy as np

# safetensors dtype string <-> numpy dtype (little endian)
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NP_TO_ST = {v.str.lstrip("<|="): k for k, v in _DTYPES.items()}


def _st_dtype(arr):
    key = arr.dtype.newbyteorder("<").str.lstrip("<|=")
    if key not in _NP_TO_ST:
        raise TypeError("unsupported dtype for safetensors: %s" % arr.dtype)
    return _NP_TO_ST[key]


def _to_numpy(t):
    if isinstance(t, np.ndarray):
        return t
    # torch tensor (duck-typed so this module does not import torch)
    if hasattr(t, "detach"):
        return t.detach().cpu().contiguous().numpy()
    return np.asarray(t)


def save_file(tensors, path, metadata=None):
    """Write a dict name -> array (numpy or torch) to `path` in safetensors format.

    Tensors are stored in the order given (callers typically pass an ordered state_dict).
    """
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        arr = _to_numpy(t)
        st = _st_dtype(arr)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[st]).tobytes()
        header[name] = {"dtype": st, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (8 - (8 + len(hjson)) % 8) % 8
    hjson += b" " * pad
    # Atomic: a temporary file in the same directory, renamed over `path` when complete.
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(hjson)))
            f.write(hjson)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_header(path):
    """Return (header_dict, data_start_offset)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=OrderedDict)
    return header, 8 + n


def load_file(path):
    """Read a safetensors file. Returns (OrderedDict name -> numpy array, metadata dict)."""
    header, start = read_header(path)
    metadata = header.pop("__metadata__", {}) or {}
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read()
    out = OrderedDict()
    for name, info in header.items():
        b, e = info["data_offsets"]
        dt = _DTYPES[info["dtype"]]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if e - b != count * dt.itemsize:
            raise ValueError("bad data_offsets for %s" % name)
        out[name] = np.frombuffer(raw, dtype=dt, count=count, offset=b).reshape(shape).copy()
    return out, dict(metadata)
