"""The msgpack wire format: round trips, encodings, zero-copy decode, typed errors."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from shared.codec import (
    DecodeError,
    Model,
    RejectReason,
    Update,
    UpdateHeader,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    encoded_size,
)


def _update(encoding: str = "fp32", **tensors) -> Update:
    rng = np.random.default_rng(0)
    tensors = tensors or {
        "a": rng.normal(size=(30, 8)).astype(np.float32),
        "b": rng.normal(size=5).astype(np.float32),
    }
    header = UpdateHeader("u1", "j1", "cn", "w1", 7, 128, 0.5, 1.0, 1.5, encoding, 1.0, None)
    return Update(header, tensors)


@pytest.mark.parametrize(("encoding", "tol"), [("fp32", 0.0), ("fp16", 2e-3), ("int8", 1 / 254)])
def test_round_trip_within_encoding_error(encoding, tol):
    up = _update(encoding)
    back = decode_update(encode_update(up))
    assert back.header == up.header
    for name, t in up.delta.items():
        peak = float(np.abs(t).max())
        np.testing.assert_allclose(back.delta[name], t, atol=tol * peak + 1e-7)
        assert back.delta[name].dtype == np.float32


def test_fp32_decode_is_zero_copy():
    back = decode_update(encode_update(_update()))
    assert not back.delta["a"].flags.owndata
    assert not back.delta["a"].flags.writeable


def test_smaller_encodings_are_smaller():
    t = {"a": np.ones((100, 100), dtype=np.float32)}
    sizes = {e: encoded_size(t, e) for e in ("fp32", "fp16", "int8")}
    assert sizes["fp16"] < 0.55 * sizes["fp32"]
    assert sizes["int8"] < 0.3 * sizes["fp32"]


def test_model_round_trip():
    m = Model(3, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    back = decode_model(encode_model(m))
    assert back.version == 3
    np.testing.assert_array_equal(back.weights["w"], m.weights["w"])


def _tamper(**changes) -> bytes:
    body = msgpack.unpackb(encode_update(_update()), raw=False)
    for path, value in changes.items():
        target = body
        keys = path.split("__")
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc1garbage", RejectReason.MALFORMED),
        (msgpack.packb([1, 2, 3]), RejectReason.MALFORMED),
        (_tamper(schema=99), RejectReason.SCHEMA),
        (_tamper(header__n_samples="many"), RejectReason.MALFORMED),
        (_tamper(header__base_version=-1), RejectReason.MALFORMED),
        (_tamper(tensors__a=["fp64", [30, 8], b"\x00" * 8, 1.0]), RejectReason.ENCODING),
        (_tamper(tensors__a=["fp32", [30, 9], b"\x00" * 960, 1.0]), RejectReason.ENCODING),
        (_tamper(tensors__a=["fp32", [-1], b"", 1.0]), RejectReason.MALFORMED),
        (_tamper(tensors__a="not a tensor"), RejectReason.MALFORMED),
        (_tamper(kind="model"), RejectReason.MALFORMED),
    ],
)
def test_bad_messages_raise_typed_errors(data, reason):
    with pytest.raises(DecodeError) as info:
        decode_update(data)
    assert info.value.reason is reason
