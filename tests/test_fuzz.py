"""Fuzzing: the decoder raises only DecodeError, and the aggregator survives any stream entry."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import service
from coordinator.aggregator import Aggregator
from shared.codec import DecodeError, Update, UpdateHeader, decode_update, encode_update
from shared.keys import Keys
from shared.settings import FederationSettings

K = Keys("fuzz")


def _valid() -> bytes:
    header = UpdateHeader("u", "u", "cn", "w", 0, 10, 1.0, 0.1, 0.1, "fp16", 0.0, None, 10)
    return encode_update(Update(header, {"a": np.ones((3, 4), np.float32),
                                         "b": np.zeros(5, np.float32)}))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_decode_error(data):
    try:
        decode_update(data)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 64))  # fmt: skip
def test_mutated_valid_updates_decode_or_raise_decode_error(flips, cut):
    data = bytearray(_valid())
    for at, value in flips:
        data[at % len(data)] = value
    data = bytes(data[: len(data) - cut])
    try:
        update = decode_update(data)
    except DecodeError:
        return
    for t in update.delta.values():
        assert isinstance(t, np.ndarray)


@pytest.fixture(scope="module")
def aggregator(redis_server, toy_data):
    import redis

    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{K.namespace}:*"):
        r.delete(key)
    fed = service.initialise(r, K, toy_data, FederationSettings(task="toy", eval_every=0))
    return r, Aggregator(r, K, fed)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(
    st.sampled_from([b"u", b"id", b"region", b"sig", b"x"]),
    st.one_of(st.binary(max_size=256), st.just(_valid())),
    min_size=1,
))  # fmt: skip
def test_the_aggregator_settles_any_stream_entry_without_crashing(aggregator, fields):
    r, agg = aggregator
    stream = K.update_stream("cn")
    before = r.xlen(stream)
    entry = r.xadd(stream, fields)
    agg.step(block_ms=10)
    # whatever it was, the entry was settled: applied, rejected or dropped, and removed
    assert r.xlen(stream) == before
    assert not r.xrange(stream, min=entry, max=entry)


# --- structurally valid messages with hostile headers and shapes ---

HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.just(2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.binary(max_size=16), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-5, 5), max_size=2),
)  # fmt: skip
DIMS = st.one_of(
    st.integers(-3, 6), st.just(0), st.integers(2**31 - 2, 2**63 - 1), st.booleans(),
    st.floats(-2, 8), st.lists(st.integers(0, 3), max_size=2), st.text(max_size=2),
)  # fmt: skip
GOOD_HEADER = UpdateHeader(
    "u", "u", "cn", "w", 0, 10, 1.0, 0.1, 0.1, "fp32", 0.0, None, 10
).to_wire()


@st.composite
def hostile_tensor(draw):
    encoding = draw(st.one_of(st.sampled_from(["fp32", "fp16", "int8"]), HOSTILE_SCALARS))
    shape = draw(st.one_of(st.lists(DIMS, max_size=10), HOSTILE_SCALARS))
    count = 1
    try:
        for d in shape:
            count *= max(int(d), 0)
    except (TypeError, ValueError, OverflowError):
        count = 3
    itemsize = (
        {"fp32": 4, "fp16": 2, "int8": 1}.get(encoding, 4) if isinstance(encoding, str) else 4
    )
    size = min(count * itemsize, 4096)
    size = draw(st.sampled_from([size, max(size - 1, 0), size + 1, 0]))
    payload = draw(st.one_of(st.just(b"\x00" * size), HOSTILE_SCALARS))
    scale = draw(st.one_of(st.just(1.0), HOSTILE_SCALARS))
    return draw(st.sampled_from([[encoding, shape, payload, scale], [encoding, shape, payload],
                                 [encoding, shape, payload, scale, 0]]))  # fmt: skip


@st.composite
def hostile_message(draw) -> bytes:
    header = dict(GOOD_HEADER)
    for key in draw(st.lists(st.sampled_from(sorted(header) + ["extra"]), max_size=4)):
        if draw(st.booleans()):
            header[key] = draw(HOSTILE_SCALARS)
        else:
            header.pop(key, None)
    names = st.one_of(st.sampled_from(["a", "b", "age_bias"]), st.text(max_size=300))
    tensors = draw(st.dictionaries(names, hostile_tensor(), max_size=3))
    body = {
        "schema": draw(st.sampled_from([1, 1, 1, 2, "1", None])),
        "kind": draw(st.sampled_from(["update", "update", "model", 7])),
        "header": draw(st.sampled_from([header, header, [], None])),
        "tensors": tensors,
    }
    return msgpack.packb(body, use_bin_type=True)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(hostile_message())
def test_hostile_structured_messages_raise_only_decode_error(data):
    try:
        update = decode_update(data)
    except DecodeError:
        return
    for t in update.delta.values():
        assert isinstance(t, np.ndarray) and t.dtype == np.float32
    assert np.isfinite(update.header.train_loss)


@pytest.mark.parametrize("shape", [[0, 2**62], [True], [0, 2**31 - 1, 2**31 - 1, 2**31 - 1],
                                   [[3]], [3.0], [-1], [2**64 - 1]])  # fmt: skip
def test_the_reported_poison_shapes_are_decode_errors(shape):
    body = {"schema": 1, "kind": "update", "header": GOOD_HEADER,
            "tensors": {"a": ["fp32", shape, b"", 1.0]}}  # fmt: skip
    with pytest.raises(DecodeError) as err:
        decode_update(msgpack.packb(body))
    assert err.value.reason in ("malformed", "encoding")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile_message(), st.text(max_size=300))
def test_the_aggregator_settles_hostile_structured_entries(aggregator, payload, update_id):
    r, agg = aggregator
    stream = K.update_stream("cn")
    entry = r.xadd(stream, {"u": payload, "id": update_id})
    agg.step(block_ms=10)
    assert not r.xrange(stream, min=entry, max=entry)  # settled and removed
    assert r.xlen(stream) == 0
