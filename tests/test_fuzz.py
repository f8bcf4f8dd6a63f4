"""Fuzzing: the decoder raises only DecodeError, and the aggregator survives any stream entry."""

from __future__ import annotations

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
def aggregator(redis_server, small_data):
    import redis

    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{K.namespace}:*"):
        r.delete(key)
    fed = service.initialise(r, K, small_data, FederationSettings(model_dim=8, eval_every=0))
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
