"""The regional HTTP service (``fedq serve``) against a live federation: real Redis, aggregator,
coordinator, workers and service processes, spoken to over loopback HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import httpx
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from coordinator import service
from harness.serving import start_service
from shared.codec import Model, encode_model
from shared.keys import Keys
from shared.processes import stop_processes
from shared.redis_server import RedisServer
from shared.settings import FederationSettings
from shared.store import ModelStore
from tests.fleet import FEDQ, Fleet, wait_until

NS = "serve"
KEYS = Keys(NS)


def _federation(redis_server, namespace: str, data, **settings):
    """A new federation under ``namespace`` of the session's Redis: (admin connection, keys,
    the record)."""
    keys = Keys(namespace)
    r = redis.Redis.from_url(redis_server.url)
    for key in r.scan_iter(f"{namespace}:*"):
        r.delete(key)
    return r, keys, service.initialise(r, keys, data, FederationSettings(**settings))


@pytest.fixture(scope="module")
def live(small_data, redis_server, tmp_path_factory):
    """A federation (cn and us train, 12 versions) with cn's service following it from the
    start: yields (admin connection, service URL, the coordinator and workers, the service)."""
    r, _keys, _fed = _federation(redis_server, NS, small_data, eval_every=0, target_versions=12,
                                 inflight_per_region=1)  # fmt: skip
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with Fleet(redis_server.url, NS, small_data) as fleet:
        proc, url = start_service(["--region", "cn", "--data", str(small_data), "--poll", "1"],
                                  fleet.env, log)  # fmt: skip
        fleet.procs.append(proc)
        fleet.aggregator()
        moving = [fleet.coordinator(), fleet.worker("cn"), fleet.worker("us")]
        yield r, url, moving, proc


def _ready(url: str) -> dict:
    return httpx.get(url + "/readyz").json()


def _recommend(url: str, **body) -> httpx.Response:
    return httpx.post(url + "/recommend", json=body)


def test_the_served_version_follows_the_federation(live):
    r, url, _moving, _proc = live
    store = ModelStore(r, KEYS)
    seen = set()
    answers: list[tuple[int, int | None]] = []  # requests made while the versions swap
    stop = threading.Event()

    def ask() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                got = client.post(url + "/recommend", json={"recent_items": [3, 1, 4], "k": 10})
                answers.append((got.status_code, got.json().get("model_version")))

    def caught_up() -> bool:
        ready = _ready(url)
        seen.add(ready["model_version"])
        current = store.current_version()
        return current >= 12 and ready["model_version"] == current

    askers = [threading.Thread(target=ask) for _ in range(4)]
    for t in askers:
        t.start()
    try:
        assert wait_until(caught_up, 240, poll=0.3)
    finally:
        stop.set()
        for t in askers:
            t.join(30)
    assert len(seen) >= 3  # it swapped while the federation moved, not only at the end
    # no request failed across the swaps, and they were answered by several versions
    assert answers and all(status == 200 for status, _ in answers)
    assert len({version for _, version in answers}) >= 2
    ready = _ready(url)
    assert ready["ready"] and ready["redis"] == "ok" and ready["swaps"] >= 3
    answer = _recommend(url, shopper=_shopper(r, url), k=5)
    assert answer.status_code == 200 and answer.json()["model_version"] == ready["model_version"]


def _shopper(_r, url) -> int:
    """A shopper of cn (the first who gets an answer)."""
    for user in range(0, 400):
        if _recommend(url, shopper=user, k=1).status_code == 200:
            return user
    raise AssertionError("no shopper of cn found")


def test_the_service_ranks_with_the_federated_evaluations_scores(live, small_data):
    """One scoring path: a request's items and scores are the evaluation's for that history,
    at that time, among the items on sale then."""
    from tasks.recommender.evaluate import ModelScorer
    from tasks.recommender.local_data import load_region
    from tasks.recommender.task import TASK

    r, url, _moving, _proc = live
    assert wait_until(lambda: _ready(url)["model_version"] == ModelStore(r, KEYS).current_version(),
                      60)  # fmt: skip
    version = _ready(url)["model_version"]
    data = load_region(small_data, "cn")
    weights = ModelStore(r, KEYS).read(version).weights
    scorer = ModelScorer(TASK.model(weights, data.shared, TASK.settings({})))
    test = data.split.test.take(np.arange(5))
    expected = scorer.scores(test)
    launch = data.shared.catalogue.launch_time
    for row in range(len(test)):
        history = [int(i) for i in test.history[row] if i >= 0]
        got = _recommend(url, recent_items=history, at=int(test.time[row]), k=20,
                         exclude_seen=False).json()  # fmt: skip
        assert got["model_version"] == version
        on_sale = np.flatnonzero(launch <= test.time[row])
        order = on_sale[np.lexsort((on_sale, -expected[row][on_sale]))][:20]
        assert [x["item_id"] for x in got["items"]] == order.tolist()
        np.testing.assert_allclose([x["score"] for x in got["items"]], expected[row][order],
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_shopper_gets_unseen_items_on_sale_with_their_attributes(live, small_data):
    r, url, _moving, _proc = live
    user = _shopper(r, url)
    body = _recommend(url, shopper=user, k=10, exclude=[0, 1, 2]).json()
    with open(small_data / "cn" / "interactions.csv") as f:
        seen = {int(line.split(",")[1]) for line in f if line.startswith(f"{user},")}
    ids = [x["item_id"] for x in body["items"]]
    assert len(ids) == 10 and not (seen | {0, 1, 2}) & set(ids)
    assert all(x["launch_time"] <= body["at"] for x in body["items"])
    assert [x["rank"] for x in body["items"]] == list(range(1, 11))
    assert {"category", "metal", "gem", "colour", "gender", "price"} <= set(body["items"][0])


def test_reach_says_which_share_of_the_regions_shoppers_a_new_item_reaches(live, small_data):
    _r, url, _moving, _proc = live
    with open(small_data / "catalogue.csv") as f:
        header = next(f).strip().split(",")
        row = dict(zip(header, next(f).strip().split(","), strict=True))
    attrs = {k: row[k] for k in ("category", "metal", "gem", "colour", "gender")}
    body = httpx.post(url + "/reach", json={"attributes": attrs, "price": float(row["price"]),
                                            "k": 50}).json()  # fmt: skip
    assert body["region"] == "cn" and body["shoppers"] > 0
    assert 0 <= body["shoppers_reached"] <= body["shoppers"]
    assert body["shown_to"] == pytest.approx(body["shoppers_reached"] / body["shoppers"])
    wider = httpx.post(url + "/reach", json={"attributes": attrs, "price": float(row["price"]),
                                             "k": 500}).json()  # fmt: skip
    assert wider["shoppers_reached"] >= body["shoppers_reached"]  # a longer list reaches more


BAD_REQUESTS = [
    # (path, body or raw bytes, headers, status, words of the detail)
    ("/recommend", {"shopper": 10**9}, None, 404, "has no events in region 'cn'"),
    ("/recommend", {"recent_items": [1, 10**6]}, None, 422, "unknown item ids 1000000"),
    ("/recommend", {"recent_items": [-3]}, None, 422, "unknown item ids -3"),
    ("/recommend", {"recent_items": [10**24]}, None, 422, "recent_items.0: Input should be less"),
    ("/recommend", {"shopper": 1, "exclude": [-(10**24)]}, None, 422, "exclude.0: Input should"),
    ("/recommend", {"shopper": 10**24}, None, 404, "has no events"),
    ("/recommend", {"shopper": 1, "exclude": [10**7]}, None, 422, "exclude: unknown item ids"),
    ("/recommend", {"shopper": 1, "k": 0}, None, 422, "k: Input should be greater than"),
    ("/recommend", {"shopper": 1, "k": 1001}, None, 422, "k: Input should be less than"),
    ("/recommend", {"shopper": 1, "k": "ten"}, None, 422, "k: Input should be a valid integer"),
    ("/recommend", {"shopper": "1"}, None, 422, "shopper: Input should be a valid integer"),
    ("/recommend", {"shopper": True}, None, 422, "shopper: Input should be a valid integer"),
    ("/recommend", {"k": 3}, None, 422, "give either shopper or recent_items"),
    ("/recommend", {"shopper": 1, "recent_items": [1]}, None, 422, "give either shopper"),
    ("/recommend", {"shopper": 1, "at": -1}, None, 422, "at: Input should be greater"),
    ("/recommend", {"shopper": 1, "colour": "red"}, None, 422, "colour: Extra inputs"),
    ("/recommend", [1, 2], None, 422, "the body must be a JSON object"),
    ("/recommend", b'{"shopper": 1,', None, 400, "the body is not valid JSON"),
    ("/recommend", b"\xff\xfe", None, 400, "the body is not valid JSON"),
    ("/recommend", b'{"shopper": 1}', {"content-type": "text/plain"}, 415, "Content-Type"),
    ("/recommend", b'{"recent_items": [' + b"1," * 40_000 + b"1]}", None, 413, "over 65536"),
    ("/reach", {"attributes": {"category": "tiara"}, "price": 5}, None, 422, "unknown category"),
    ("/reach", {"attributes": {"size": "x"}, "price": 5}, None, 422, "unknown size"),
    ("/reach", b'{"attributes": {}, "price": NaN}', None, 422, "price: Input should be a finite"),
    ("/reach", {"attributes": {}, "price": -1}, None, 422, "price: Input should be greater"),
    ("/nowhere", {}, None, 404, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "headers", "status", "words"), BAD_REQUESTS,
                         ids=[f"{p}-{s}-{w[:24]}" for p, _b, _h, s, w in BAD_REQUESTS])  # fmt: skip
def test_every_bad_input_gets_its_4xx_with_a_one_line_reason(live, path, body, headers, status,
                                                              words):  # fmt: skip
    _r, url, _moving, proc = live
    if isinstance(body, bytes):
        sent = httpx.post(url + path, content=body,
                          headers=headers or {"content-type": "application/json"})  # fmt: skip
    else:
        sent = httpx.post(url + path, json=body, headers=headers)
    assert sent.status_code == status, sent.text
    detail = sent.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    assert proc.poll() is None


def test_a_body_without_a_length_over_the_limit_is_refused_too(live):
    _r, url, _moving, _proc = live
    chunks = (b'{"recent_items": [' + b"1," * 10_000 for _ in range(4))  # chunked, no length
    sent = httpx.post(url + "/recommend", content=chunks,
                      headers={"content-type": "application/json"})  # fmt: skip
    assert sent.status_code == 413 and "over 65536" in sent.json()["detail"]


def test_metrics_say_what_is_served_and_count_requests(live):
    _r, url, _moving, _proc = live
    _recommend(url, shopper=10**9)
    text = httpx.get(url + "/metrics").text
    version = _ready(url)["model_version"]
    assert f'fedq_service_model_version{{region="cn",task="recommender"}} {float(version)}' in text
    assert 'fedq_service_redis_up{region="cn",task="recommender"} 1.0' in text
    assert 'fedq_service_requests_total{route="/recommend",status="404"}' in text
    assert 'fedq_service_request_duration_seconds_bucket{le="0.001",route="/recommend"}' in text
    assert "process_cpu_seconds_total" in text
    assert httpx.get(url + "/openapi.json").json()["paths"].keys() >= {"/recommend", "/reach"}


@pytest.mark.parametrize("bad", ["wrong shape", "corrupt"])
def test_a_bad_blob_is_refused_and_the_old_model_keeps_serving(live, bad):
    """What a compromised writer could leave in Redis: the service says so and never serves it."""
    r, url, moving, _proc = live
    for proc in moving:  # the coordinator and the workers: the federation stands still
        proc.terminate()
    store = ModelStore(r, KEYS)
    assert wait_until(lambda: _ready(url)["model_version"] == store.current_version(), 60)
    before = _ready(url)
    good = before["model_version"]
    weights = store.read(good).weights
    name = next(iter(weights))
    weights[name] = np.zeros((3, 3), np.float32)
    bad_version = good + (1 if bad == "wrong shape" else 2)  # a refusal is for good: new numbers
    blob = encode_model(Model(bad_version, weights)) if bad == "wrong shape" else b"\x00junk"
    r.set(KEYS.model(bad_version), blob)
    r.set(KEYS.version, bad_version)
    assert wait_until(lambda: str(bad_version) in _ready(url)["refused_versions"], 30)
    after = _ready(url)
    assert after["model_version"] == good and after["ready"]
    why = after["refused_versions"][str(bad_version)]
    assert (name in why) if bad == "wrong shape" else ("does not decode" in why)
    assert _recommend(url, recent_items=[1, 2, 3]).json()["model_version"] == good
    metrics = httpx.get(url + "/metrics").text
    assert 'fedq_service_models_refused_total{region="cn",task="recommender"}' in metrics
    r.set(KEYS.version, good)  # put the federation back for the next case
    r.delete(KEYS.model(bad_version))


def _serve_env(url: str, namespace: str) -> dict[str, str]:
    return {**os.environ, "FEDQ_REDIS_URL": url, "FEDQ_NAMESPACE": namespace,
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def test_redis_gone_keeps_the_last_model_serving_and_says_so(small_data, tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    procs: list[subprocess.Popen] = []
    try:
        keys = Keys("outage")
        service.initialise(server.client(), keys, small_data, FederationSettings(eval_every=0))
        args = ["--region", "cn", "--data", str(small_data), "--poll", "0.5"]
        proc, url = start_service(args, _serve_env(server.url, "outage"), tmp_path / "serve.log")
        procs.append(proc)
        assert wait_until(lambda: _ready(url)["ready"], 60)
        server.stop()
        assert wait_until(lambda: _ready(url)["redis"] != "ok", 30)
        gone = httpx.get(url + "/readyz")
        assert gone.status_code == 200 and "unreachable" in gone.json()["redis"]
        assert _recommend(url, recent_items=[4, 5]).json()["model_version"] == 0
        assert (
            'fedq_service_redis_up{region="cn",task="recommender"} 0.0'
            in httpx.get(url + "/metrics").text
        )
        server.start()  # same port, same data: the service finds it again
        assert wait_until(lambda: _ready(url)["redis"] == "ok", 60)
        assert proc.poll() is None
    finally:
        stop_processes(procs)
        server.stop()


def test_an_exported_model_is_served_without_redis(small_data, tmp_path, redis_server):
    _federation(redis_server, "exported", small_data, eval_every=0)
    out = tmp_path / "model.npz"
    subprocess.run([*FEDQ, "export", "--out", str(out)], env=_serve_env(redis_server.url,
                   "exported"), check=True, capture_output=True)  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        args = ["--region", "cn", "--data", str(small_data), "--model", str(out)]
        proc, url = start_service(args, _serve_env("redis://127.0.0.1:1/0", "exported"),
                                  tmp_path / "serve.log")  # fmt: skip
        procs.append(proc)
        ready = _ready(url)
        assert ready["ready"] and ready["source"] == str(out) and ready["model_version"] == 0
        assert _recommend(url, recent_items=[7]).status_code == 200
    finally:
        stop_processes(procs)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--region", "atlantis"], "unknown region 'atlantis'"),
        (["--region", "cn", "--model", "{tmp}/nothing.npz"], "does not exist"),
        (["--region", "cn", "--port", "70000"], "70000 is not in the range"),
        (["--region", "cn", "--no-url"], "no Redis to look at"),
    ],
)
def test_a_service_that_cannot_start_says_why_in_one_line(small_data, tmp_path, redis_server,
                                                          args, words):  # fmt: skip
    keys = Keys("refuse")
    r = redis.Redis.from_url(redis_server.url)
    if r.exists(keys.config) == 0:
        service.initialise(r, keys, small_data, FederationSettings(eval_every=0))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = _serve_env(redis_server.url, "refuse")
    if "--no-url" in args:  # no URL, no embedded server running: never an empty one started
        args.remove("--no-url")
        env = {k: v for k, v in env.items() if k != "FEDQ_REDIS_URL"}
        env["FEDQ_HOME"] = str(tmp_path / "home")
    done = subprocess.run([*FEDQ, "serve", "--data", str(small_data), *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode != 0 and len(errors) == 1 and words in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_task_without_a_service_is_refused(toy_data, tmp_path, redis_server):
    _federation(redis_server, "toyserve", toy_data, task="toy", eval_every=0)
    done = subprocess.run([*FEDQ, "serve", "--data", str(toy_data), "--region", "cn"],
                          capture_output=True, text=True, timeout=120,
                          env=_serve_env(redis_server.url, "toyserve"))  # fmt: skip
    assert done.returncode == 1 and "task 'toy' has no online service" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_only_evaluated_versions_are_served_with_only_evaluated(small_data, redis_server,
                                                               tmp_path):  # fmt: skip
    from shared.evaluations import accepted_results
    from shared.federation import read

    r, keys, fed = _federation(redis_server, "serveeval", small_data, eval_every=4,
                               target_versions=12, inflight_per_region=1)  # fmt: skip
    with Fleet(redis_server.url, "serveeval", small_data) as fleet:
        args = ["--region", "cn", "--data", str(small_data), "--poll", "0.5", "--only-evaluated"]
        proc, url = start_service(args, fleet.env, tmp_path / "serve.log")
        fleet.procs.append(proc)
        first = _ready(url)["model_version"]
        fleet.aggregator()
        fleet.coordinator()
        for region in fed.regions:
            fleet.worker(region)
        served = []

        def evaluated_served() -> bool:
            served.append(_ready(url)["model_version"])
            return served[-1] >= 4

        assert wait_until(evaluated_served, 240, poll=0.2), (served[-5:], proc.poll())
        assert wait_until(lambda: r.exists(keys.done), 240)
        served.append(_ready(url)["model_version"])
        results = accepted_results(r, keys, read(r, keys))
        complete = {v for v, by in results.items() if set(by) == set(fed.regions)}
        assert first == 0 and set(served) - {first} <= complete, (served, sorted(complete))
        assert r.get(keys.version) and int(r.get(keys.version)) >= 12


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
_fields = {"/recommend": ["shopper", "recent_items", "k", "exclude", "exclude_seen", "at"],
           "/reach": ["attributes", "price", "k"]}  # fmt: skip


@given(path=st.sampled_from(sorted(_fields)), data=st.data())
@hypothesis_settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_no_body_a_client_can_send_makes_the_service_fail(live, path, data):
    """Hostile bodies: the known fields with any JSON values, or any JSON at all."""
    _r, url, _moving, proc = live
    names = _fields[path]
    body = data.draw(st.one_of(
        st.dictionaries(st.sampled_from(names), _json, max_size=len(names)),
        _json,
    ))  # fmt: skip
    sent = httpx.post(url + path, content=json.dumps(body, allow_nan=True).encode(),
                      headers={"content-type": "application/json"})  # fmt: skip
    assert sent.status_code < 500, (body, sent.text)
    assert isinstance(sent.json()["detail" if sent.status_code >= 400 else "model_version"],
                      str if sent.status_code >= 400 else int)  # fmt: skip
    assert proc.poll() is None


def test_fedq_recommend_and_the_service_give_the_same_top_k(live, small_data, redis_server):
    """The batch path (the CLI) and the online one rank through the same code."""
    r, url, _moving, _proc = live
    store = ModelStore(r, KEYS)
    assert wait_until(lambda: _ready(url)["model_version"] == store.current_version(), 60)
    user = _shopper(r, url)
    online = _recommend(url, shopper=user, k=10).json()
    batch = subprocess.run([*FEDQ, "recommend", "--data", str(small_data), "--region", "cn",
                            "--user", str(user), "-k", "10", "--json",
                            "--version", str(online["model_version"])],
                           capture_output=True, text=True, timeout=120,
                           env=_serve_env(redis_server.url, NS))  # fmt: skip
    assert batch.returncode == 0, batch.stderr
    offline = json.loads(batch.stdout)
    assert offline["model_version"] == online["model_version"]
    assert [x["item_id"] for x in offline["recommendations"]] == [
        x["item_id"] for x in online["items"]
    ]
    np.testing.assert_allclose([x["score"] for x in offline["recommendations"]],
                               [x["score"] for x in online["items"]], atol=1e-4)  # fmt: skip


def test_not_ready_until_a_model_that_passed_is_loaded(small_data, redis_server, tmp_path):
    r, keys, _fed = _federation(redis_server, "notready", small_data, eval_every=0)
    good = ModelStore(r, keys).read(0).weights
    r.set(keys.model(0), b"\x00not a model")  # the only version there is: broken
    procs: list[subprocess.Popen] = []
    try:
        args = ["--region", "cn", "--data", str(small_data), "--poll", "0.3"]
        proc, url = start_service(args, _serve_env(redis_server.url, "notready"),
                                  tmp_path / "serve.log")  # fmt: skip
        procs.append(proc)
        assert wait_until(lambda: "0" in _ready(url)["refused_versions"], 30)
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        refused = _recommend(url, recent_items=[1])
        assert refused.status_code == 503 and "no model loaded yet" in refused.json()["detail"]
        assert httpx.get(url + "/healthz").status_code == 200  # alive, only not ready
        r.set(keys.model(1), encode_model(Model(1, good)))
        r.set(keys.version, 1)
        assert wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 30)
        assert _recommend(url, recent_items=[1]).json()["model_version"] == 1
    finally:
        stop_processes(procs)


def test_the_service_leaves_no_raw_shopper_data_in_redis(live, small_data):
    """After every request above (shoppers by id, histories, times), Redis holds no event
    timestamp and no item sequence of the data: the service reads and writes nothing there."""
    from tests.privacy_scan import assert_no_raw_data

    r, url, _moving, _proc = live
    for user in range(0, 50):
        _recommend(url, shopper=user, k=20)
    assert_no_raw_data(r, small_data)
