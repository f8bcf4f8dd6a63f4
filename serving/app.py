"""The regional service's HTTP application: what every task's service shares.

FastAPI serves the task's routes (``TaskService.router``) beside ``/healthz`` (the process is
up), ``/readyz`` (a model is loaded: 503 until then; while Redis is away it stays ready, since
the last model keeps serving, and says so), ``/metrics`` (Prometheus text) and the OpenAPI page
(``/docs``). Every error a client can cause is a 4xx whose ``detail`` is one line: bodies over
``MAX_BODY`` bytes (FastAPI's own limit), JSON that does not parse (400), fields that do not
validate (422, the first problems named). A bug is a 500 with one line, never a traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from serving.follower import Served

MAX_BODY = 64 * 1024
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                   1.0, 2.0)  # fmt: skip


class ModelSource(Protocol):
    """Where the served model comes from: a ``ModelFollower``, or a ``FixedModel`` (a file)."""

    served: Served | None
    swaps: int
    refused: dict[int, str]
    redis_ok: bool
    problem: str | None  # why the last look at the federation failed (not an outage)


@dataclass
class FixedModel:
    """A model read once (``fedq serve --model FILE``): no Redis, no swaps."""

    served: Served | None
    swaps: int = 0
    redis_ok: bool = True
    problem: str | None = None

    def __post_init__(self) -> None:
        self.refused: dict[int, str] = {}


@dataclass(frozen=True)
class ServiceInfo:
    task: str
    region: str
    source: str  # "redis" or the model file's path


def error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(
    source: ModelSource,
    info: ServiceInfo,
    router: Any,
    follow: Callable[[threading.Event], None] | None = None,
) -> FastAPI:
    """The app; ``follow(stop)`` (the follower's loop) runs in a thread while the app serves."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(_ModelCollector(source, info))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        stop = threading.Event()
        thread = None
        if follow is not None:
            thread = threading.Thread(target=follow, args=(stop,), name="follower", daemon=True)
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = FastAPI(title=f"fedq {info.task} service ({info.region})", lifespan=lifespan,
                  max_body_size=MAX_BODY)  # fmt: skip
    app.include_router(router)

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded (503 until then)")
    async def readyz() -> JSONResponse:
        served = source.served
        body = {
            "ready": served is not None,
            "model_version": None if served is None else served.version,
            "loaded_at": None if served is None else served.loaded_at,
            "source": info.source,
            "redis": "ok" if source.redis_ok else "unreachable: serving the last model loaded",
            "swaps": source.swaps,
            "following": source.problem or "ok",
            "refused_versions": {str(v): why for v, why in sorted(source.refused.items())[-5:]},
        }
        return JSONResponse(body, status_code=200 if served is not None else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 413 else f"the body is over {MAX_BODY} bytes"
        return JSONResponse({"detail": str(detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = list(exc.errors())
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/json" and any(tuple(p.get("loc", ())) == ("body",)
                                              for p in problems):  # fmt: skip
            return error(415, f"the body must be JSON sent as Content-Type: application/json "
                              f"(got {kind[:60] or 'no Content-Type'})")  # fmt: skip
        if any(p.get("type") == "json_invalid" for p in problems):
            why = next(p for p in problems if p.get("type") == "json_invalid")
            reason = (why.get("ctx") or {}).get("error", "")
            return error(400, f"the body is not valid JSON ({reason})")
        return error(422, validation_line(problems))

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises it after this response: the server's log gets the traceback
        return error(500, f"internal error ({type(exc).__name__}); the service log has it")

    return _Instrumented(app, registry)  # type: ignore[return-value]


def validation_line(problems: list[dict[str, Any]], most: int = 3) -> str:
    """Pydantic's errors as one line: ``field: message`` for the first ``most`` of them."""
    parts = []
    for p in problems[:most]:
        where = ".".join(str(x) for x in p.get("loc", ()) if x != "body")
        message = str(p.get("msg", "invalid")).removeprefix("Value error, ")
        if not where and p.get("type") == "model_attributes_type":
            message = "the body must be a JSON object"
        parts.append(f"{where}: {message}" if where else message)
    more = len(problems) - most
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


class _Instrumented:
    """The app with request counts and latencies per route (a plain ASGI wrapper: Starlette's
    ``BaseHTTPMiddleware`` costs a task per request). Unknown paths count as ``other``, so a
    scanner cannot grow the label set."""

    def __init__(self, app: FastAPI, registry: CollectorRegistry) -> None:
        self.app = app
        # the OpenAPI page lists the included routers' paths too (app.routes holds them lazily)
        self.routes = {getattr(r, "path", "") for r in app.routes} | set(app.openapi()["paths"])
        self.requests = Counter("fedq_service_requests", "HTTP requests by route and status.",
                                ["route", "status"], registry=registry)  # fmt: skip
        self.latency = Histogram("fedq_service_request_duration_seconds",
                                 "Time from a request's arrival to its response, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS,
                                 registry=registry)  # fmt: skip

    def __getattr__(self, name: str) -> Any:  # openapi(), routes, state: the FastAPI app's
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        start = time.perf_counter()
        if _declared_length(scope) > MAX_BODY:  # said up front: answered before it is read
            await error(413, f"the body is over {MAX_BODY} bytes")(scope, receive, send)
            self.latency.labels(route).observe(time.perf_counter() - start)
            self.requests.labels(route, "413").inc()
            return

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            self.latency.labels(route).observe(time.perf_counter() - start)
            self.requests.labels(route, str(status)).inc()


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # the server itself refuses a malformed length
    return 0


class _ModelCollector:
    """The served model's gauges and counters, read from the source at each scrape."""

    def __init__(self, source: ModelSource, info: ServiceInfo) -> None:
        self.source, self.info = source, info

    def collect(self) -> Iterator[Any]:
        served = self.source.served
        labels = ["region", "task"]
        values = [self.info.region, self.info.task]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value)
            return c

        yield gauge("fedq_service_model_loaded", "1 if a model is being served.",
                    float(served is not None))  # fmt: skip
        yield gauge("fedq_service_model_version", "The served model's version (-1: none).",
                    float(served.version if served else -1))  # fmt: skip
        yield gauge("fedq_service_model_loaded_timestamp_seconds",
                    "When the served model was swapped in (Unix time; 0: none).",
                    served.loaded_at if served else 0.0)  # fmt: skip
        yield gauge("fedq_service_redis_up", "1 if the last look at Redis succeeded.",
                    float(self.source.redis_ok))  # fmt: skip
        yield counter("fedq_service_model_swaps", "Models swapped in since the start.",
                      float(self.source.swaps))  # fmt: skip
        yield counter("fedq_service_models_refused", "Model versions refused (bad blob).",
                      float(len(self.source.refused)))  # fmt: skip
