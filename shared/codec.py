"""The wire format: msgpack models and updates, three tensor encodings, typed decode errors.

A message is a msgpack map ``{"schema": 1, "kind": "update" | "model", "header": {...},
"tensors": {name: [dtype, shape, bytes, scale]}}``. Tensors travel as raw little-endian bytes:
``fp32`` decodes with ``numpy.frombuffer`` without a copy (read-only arrays); ``fp16`` halves the
bytes; ``int8`` stores ``round(x / scale)`` with one scale per tensor (``max|x| / 127``), a
quarter of the bytes at a relative error of at most 1/254 of the tensor's largest value.

Decoding never raises anything but ``DecodeError``, whose ``reason`` is a short code the
consumer records (see ``RejectReason``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

from shared.errors import FedqError

Weights = dict[str, np.ndarray]  # a model, an update's delta: named tensors (the one alias)

SCHEMA = 1
ENCODINGS = ("fp32", "fp16", "int8")
_WIRE_DTYPE = {"fp32": "<f4", "fp16": "<f2", "int8": "i1"}
MAX_DIMS = 8
MAX_DIM = 2**31 - 1  # one axis; the element count is bounded by the payload's byte length
MAX_TEXT = 256  # characters of an id, a region or a worker name in a header


class RejectReason(StrEnum):
    """Why an update was not applied; recorded with every rejection."""

    MALFORMED = "malformed"  # not msgpack, not the schema's structure
    SCHEMA = "schema"  # a schema version this aggregator does not speak
    ENCODING = "encoding"  # unknown encoding or dtype, bytes not matching the shape
    UNKNOWN_REGION = "unknown_region"
    SHAPE = "shape"  # tensor names or shapes do not fit the model
    NON_FINITE = "non_finite"  # NaN or infinity
    NORM = "norm"  # update norm above the bound
    STALE = "stale"  # base version older than the staleness window
    FUTURE_BASE = "future_base"  # base version newer than the model (impossible for honest workers)
    LATE = "late"  # sync mode: an update for a round that has closed
    TOO_LARGE = "too_large"
    UNSIGNED = "unsigned"  # the federation signs updates; this one has no signature
    BAD_SIGNATURE = "bad_signature"  # altered, or signed with another region's secret
    WRONG_REGION = "wrong_region"  # the header names another region than the one that signed
    UNKNOWN_JOB = "unknown_job"  # no such job was issued to the stream's region
    REPLAYED = "replayed"  # a signed copy of an update already settled (never applied twice)
    QUOTA = "quota"  # past its region's backlog bound on its stream (coordinator/quota.py)
    DIRECTION = "direction"  # points against the model's recent trajectory (coordinator/guard.py)
    INFLUENCE = "influence"  # its region already holds more than its share of the recent weight
    SUSPECTED = "suspected"  # its region's recent updates lost most of their length or weight
    QUARANTINED = "quarantined"  # an operator quarantined its region


class DecodeError(FedqError):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UpdateHeader:
    update_id: str
    job_id: str
    region: str
    worker_id: str
    base_version: int
    n_samples: int
    train_loss: float
    train_seconds: float
    total_seconds: float
    encoding: str = "fp32"
    created_at: float = 0.0
    round: int | None = None  # sync mode: the round the job belonged to
    data_size: int = 0  # training examples the region holds (the weight FedAvg-style methods use)

    @property
    def weight_samples(self) -> int:
        """The sample count an update is weighed by: its region's data size, else its own."""
        return self.data_size if self.data_size > 0 else self.n_samples

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Update:
    header: UpdateHeader
    delta: dict[str, np.ndarray]


@dataclass(frozen=True)
class Model:
    version: int
    weights: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


def encode_update(update: Update) -> bytes:
    encoding = update.header.encoding
    return _pack("update", update.header.to_wire(), update.delta, encoding)


def decode_update(data: bytes) -> Update:
    header, tensors = _unpack(data, "update")
    try:
        h = UpdateHeader(
            update_id=_str(header, "update_id"),
            job_id=_str(header, "job_id"),
            region=_str(header, "region"),
            worker_id=_str(header, "worker_id"),
            base_version=_int(header, "base_version"),
            n_samples=_int(header, "n_samples"),
            train_loss=_float(header, "train_loss"),
            train_seconds=_float(header, "train_seconds"),
            total_seconds=_float(header, "total_seconds"),
            encoding=_str(header, "encoding"),
            created_at=_float(header, "created_at"),
            round=None if header.get("round") is None else _int(header, "round"),
            data_size=_int(header, "data_size") if "data_size" in header else 0,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(RejectReason.MALFORMED, f"header: {exc}"[:300]) from None
    problem = header_problem(h)
    if problem:
        raise DecodeError(RejectReason.MALFORMED, f"header: {problem}")
    return Update(h, tensors)


def header_problem(h: UpdateHeader) -> str | None:
    """What is wrong with an update header's values (its types are checked on decoding).

    Every number a header carries ends up in the applies stream and in ``--json`` output, so a
    NaN or an absurd count is refused here rather than printed later as invalid JSON."""
    if h.n_samples < 1 or h.base_version < 0 or h.data_size < 0:
        return "n_samples < 1, base_version < 0 or data_size < 0"
    if max(h.n_samples, h.base_version, h.data_size, abs(h.round or 0)) > 2**53:
        return "a count above 2**53"
    if h.train_loss < 0 or h.train_seconds < 0 or h.total_seconds < 0 or h.created_at < 0:
        return "train_loss, train_seconds, total_seconds and created_at must be >= 0"
    if h.encoding not in ENCODINGS:
        return f"encoding {h.encoding[:20]!r} (one of {', '.join(ENCODINGS)})"
    return None


def encode_model(model: Model) -> bytes:
    return _pack("model", {"version": model.version, **model.info}, model.weights, "fp32")


def decode_model(data: bytes) -> Model:
    header, tensors = _unpack(data, "model")
    version = header.get("version")
    if not _is_int(version):
        raise DecodeError(RejectReason.MALFORMED, "model header has no integer version")
    info = {k: v for k, v in header.items() if k != "version"}
    return Model(version, tensors, info)


def encode_tensor(x: np.ndarray, encoding: str) -> list[Any]:
    """``[dtype, shape, bytes, scale]`` for one tensor."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    x = np.asarray(x, dtype=np.float32)
    scale = 1.0
    if encoding == "int8":
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        wire = np.clip(np.rint(x / scale), -127, 127).astype("i1")
    else:
        wire = x.astype(_WIRE_DTYPE[encoding], copy=False)
    # a memoryview: msgpack copies it into the message once, with no intermediate bytes object
    return [encoding, list(x.shape), memoryview(np.ascontiguousarray(wire)).cast("B"), scale]


def decode_tensor(name: str, raw: Any) -> np.ndarray:
    try:
        return _decode_tensor(name, raw)
    except DecodeError:
        raise
    except Exception as exc:  # a shape or value numpy refuses that the checks did not foresee
        raise DecodeError(
            RejectReason.MALFORMED, f"tensor {name[:40]!r}: {type(exc).__name__}: {exc}"[:300]
        ) from None


def _decode_tensor(name: str, raw: Any) -> np.ndarray:
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        raise DecodeError(
            RejectReason.MALFORMED, f"tensor {name[:40]!r}: not [dtype, shape, bytes, scale]"
        )
    encoding, shape, payload, scale = raw
    if not isinstance(encoding, str) or encoding not in _WIRE_DTYPE:
        raise DecodeError(
            RejectReason.ENCODING, f"tensor {name[:40]!r}: unknown encoding {encoding!r:.40}"
        )
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_DIMS
        or not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise DecodeError(RejectReason.MALFORMED, f"tensor {name[:40]!r}: bad shape {shape!r:.80}")
    if not isinstance(payload, bytes):
        raise DecodeError(RejectReason.MALFORMED, f"tensor {name[:40]!r}: payload is not bytes")
    if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
        raise DecodeError(RejectReason.ENCODING, f"tensor {name[:40]!r}: bad scale {scale!r:.40}")
    dtype = np.dtype(_WIRE_DTYPE[encoding])
    count = math.prod(shape)
    if count * dtype.itemsize != len(payload):
        raise DecodeError(
            RejectReason.ENCODING,
            f"tensor {name[:40]!r}: {len(payload)} bytes for shape {list(shape)} in {encoding}",
        )
    wire = np.frombuffer(payload, dtype=dtype).reshape(shape)
    if encoding == "fp32":
        return wire  # zero-copy, read-only view of the message bytes
    if encoding == "fp16":
        return wire.astype(np.float32)
    out = wire.astype(np.float32)
    out *= np.float32(scale)  # in place: a 0-d tensor stays an array, not a numpy scalar
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def encoded_size(tensors: Mapping[str, np.ndarray], encoding: str) -> int:
    return len(_pack("update", {}, tensors, encoding))


def _pack(
    kind: str, header: dict[str, Any], tensors: Mapping[str, np.ndarray], encoding: str
) -> bytes:
    body = {
        "schema": SCHEMA,
        "kind": kind,
        "header": header,
        "tensors": {name: encode_tensor(t, encoding) for name, t in tensors.items()},
    }
    return msgpack.packb(body, use_bin_type=True)


def _unpack(data: bytes, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(RejectReason.MALFORMED, f"expected bytes, got {type(data).__name__}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data))
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(RejectReason.MALFORMED, f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise DecodeError(RejectReason.MALFORMED, "message is not a map")
    if body.get("schema") != SCHEMA:
        raise DecodeError(RejectReason.SCHEMA, f"schema {body.get('schema')!r}, expected {SCHEMA}")
    if body.get("kind") != kind:
        raise DecodeError(RejectReason.MALFORMED, f"kind {body.get('kind')!r}, expected {kind!r}")
    header, tensors = body.get("header"), body.get("tensors")
    if not isinstance(header, dict) or not isinstance(tensors, dict) or not tensors:
        raise DecodeError(RejectReason.MALFORMED, "header or tensors missing")
    decoded = {}
    for name, raw in tensors.items():
        if not isinstance(name, str):
            raise DecodeError(RejectReason.MALFORMED, "tensor name is not a string")
        decoded[name] = decode_tensor(name, raw)
    return header, decoded


def _str(h: dict, key: str) -> str:
    value = h[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    if not value or len(value) > MAX_TEXT:
        raise ValueError(f"{key} is empty or longer than {MAX_TEXT} characters")
    return value


def _int(h: dict, key: str) -> int:
    value = h[key]
    if not _is_int(value):
        raise TypeError(f"{key} is not an integer")
    return value


def _float(h: dict, key: str) -> float:
    value = h[key]
    if not _is_number(value):
        raise TypeError(f"{key} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{key} is not finite")
    return value
