"""The proxy's ASGI layers: the SERVER span (whose context it continues, what it records when the app fails), the
access log, and reading a request body."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from unhardcoded.server.tracing import ServerSpans
from unhardcoded.testing import TelemetryCapture

CURRENT = context.get_current
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class _HeaderPropagator(TextMapPropagator):
    """A propagator of another header (as B3 or a vendor's would be): ``X-Other-Trace: {trace}-{span}``."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        values = getter.get(carrier, "X-Other-Trace") if getter else None
        if not values:
            return context if context is not None else CURRENT()
        trace_id, span_id = values[0].split("-")
        parent = trace.NonRecordingSpan(
            trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=trace.TraceFlags(1))
        )
        return trace.set_span_in_context(parent, context)

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return {"X-Other-Trace"}


def run(app: ServerSpans, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        seen["span"] = trace.get_current_span()
        seen["baggage"] = baggage.get_all()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app.app = inner
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": headers,
        "scheme": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    asyncio.run(app(scope, receive, send))
    return seen


@pytest.fixture
def spans(tel: TelemetryCapture) -> tuple[ServerSpans, InMemorySpanExporter]:
    provider, exporter = tel.tracer_provider, tel.exporter
    return ServerSpans(None, tracer_provider=provider), exporter  # type: ignore[arg-type]


def test_a_traceparent_is_continued(spans: tuple[ServerSpans, InMemorySpanExporter]) -> None:
    app, exporter = spans
    seen = run(
        app,
        [
            (b"content-type", b"application/json"),
            (b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()),
            (b"baggage", b"unhardcoded.workflow.id=wf_1"),
        ],
    )
    (span,) = exporter.get_finished_spans()
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert format(span.parent.span_id, "016x") == CALLER_SPAN
    assert seen["span"].get_span_context().span_id == span.context.span_id  # our span is current inside
    assert seen["baggage"] == {"unhardcoded.workflow.id": "wf_1"}


def test_without_propagation_headers_the_current_context_stays(spans: tuple[ServerSpans, InMemorySpanExporter]) -> None:
    app, exporter = spans
    token = context.attach(baggage.set_baggage("tenant", "t1"))
    try:
        seen = run(app, [(b"content-type", b"application/json"), (b"user-agent", b"test")])
    finally:
        context.detach(token)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert seen["baggage"] == {"tenant": "t1"}
    assert span.attributes["user_agent.original"] == "test"


def test_another_propagators_header_is_read(spans: tuple[ServerSpans, InMemorySpanExporter]) -> None:
    app, exporter = spans
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(_HeaderPropagator())
    try:
        run(app, [(b"x-other-trace", f"{CALLER_TRACE}-{CALLER_SPAN}".encode())])
    finally:
        propagate.set_global_textmap(before)
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert format(span.parent.span_id, "016x") == CALLER_SPAN


def test_an_app_that_raises_leaves_an_error_span(spans: tuple[ServerSpans, InMemorySpanExporter]) -> None:
    app, exporter = spans

    async def failing(scope: dict, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    app.app = failing
    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
    with pytest.raises(ValueError):
        asyncio.run(app(scope, None, None))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: boom"
    assert [e.name for e in span.events] == ["exception"]
    assert context.get_current() == context.Context()  # nothing left attached


# --------------------------------------------------------------------------- the access log


def test_the_access_log_line_is_written_after_the_request(caplog: pytest.LogCaptureFixture) -> None:
    from unhardcoded.server.access import LOGGER_NAME, AccessLog

    order: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        order.append("answered")

    async def send(message: dict) -> None:
        order.append(message["type"])

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x/receipts/req 1",
        "query_string": b"a=1",
        "http_version": "1.1",
        "client": ("127.0.0.1", 50412),
    }
    with caplog.at_level("INFO", logger=LOGGER_NAME):
        asyncio.run(AccessLog(app)(scope, None, send))
        assert order == ["http.response.start", "http.response.body", "answered"]
        (record,) = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert record.getMessage() == '127.0.0.1:50412 - "GET /x/receipts/req%201?a=1 HTTP/1.1" 404'
    # The args are uvicorn's, so its AccessFormatter (client_addr, request_line, status_code) formats it.
    assert record.args == ("127.0.0.1:50412", "GET", "/x/receipts/req%201?a=1", "1.1", 404)


def test_an_app_that_raises_is_logged_as_a_500(caplog: pytest.LogCaptureFixture) -> None:
    from unhardcoded.server.access import LOGGER_NAME, AccessLog

    async def app(scope: dict, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "http_version": "1.1", "client": None}
    with caplog.at_level("INFO", logger=LOGGER_NAME), pytest.raises(RuntimeError):
        asyncio.run(AccessLog(app)(scope, None, None))
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME] == [
        ' - "POST /v1/chat/completions HTTP/1.1" 500'
    ]


# --------------------------------------------------------------------------- reading the body


def read(messages: list[dict], headers: list[tuple[bytes, bytes]] = (), limit: int = 100) -> bytes:
    from starlette.requests import Request

    from unhardcoded.server.request import read_body

    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return asyncio.run(read_body(Request({"type": "http", "headers": list(headers)}, receive), limit))


def test_a_body_in_parts_is_joined() -> None:
    assert (
        read(
            [
                {"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"", "more_body": True},
                {"type": "http.request", "body": b"c"},
            ]
        )
        == b"abc"
    )
    assert read([{"type": "http.request"}]) == b""


@pytest.mark.parametrize(
    ("headers", "messages", "status", "needle"),
    [
        ([(b"content-length", b"abc")], [], 400, "Content-Length: not a number"),
        ([(b"content-length", b"101")], [], 413, "limit of 100 bytes"),  # refused before anything is read
        (
            [],
            [
                {"type": "http.request", "body": b"x" * 60, "more_body": True},
                {"type": "http.request", "body": b"x" * 60},
            ],
            413,
            "limit of 100 bytes",
        ),
    ],
)
def test_bad_lengths_are_refused(headers, messages, status, needle) -> None:
    from unhardcoded.server.errors import APIError

    with pytest.raises(APIError) as caught:
        read(messages, headers)
    assert caught.value.status == status and needle in caught.value.message


def test_a_caller_that_leaves_mid_body_is_a_disconnect() -> None:
    from starlette.requests import ClientDisconnect

    with pytest.raises(ClientDisconnect):
        read([{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.disconnect"}])


def test_the_server_span_is_made_once_the_answer_is_out_with_its_start_from_before(tel: TelemetryCapture) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Starts(SpanProcessor):
        def __init__(self) -> None:
            self.names: list[str] = []

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self.names.append(span.name)

    exporter, starts = tel.exporter, Starts()
    provider = tel.tracer_provider
    provider.add_span_processor(starts)
    seen: dict[str, Any] = {}

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        seen["entered"] = time.time_ns()
        seen["started"] = list(starts.names)
        seen["span"] = trace.get_current_span()
        # A child started the ordinary way inside the request: its parent is the server span, not made yet.
        provider.get_tracer("child").start_span("child").end()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "scheme": "http",
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 5000),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        pass

    asyncio.run(ServerSpans(inner, tracer_provider=provider)(scope, receive, send))
    assert seen["started"] == []  # nothing was started on the request's path
    child, server = exporter.get_finished_spans()
    assert starts.names == ["child", "POST /v1/chat/completions"]
    assert child.parent.span_id == server.context.span_id == seen["span"].get_span_context().span_id
    assert server.start_time <= seen["entered"] and server.attributes["http.response.status_code"] == 200


def test_an_answers_telemetry_is_recorded_after_the_delay_piece_by_piece() -> None:
    from unhardcoded.server.app import RECORD_DELAY_S, RecordLater

    async def main() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        started = loop.time()

        def first() -> None:
            order.append("first")
            loop.call_soon(order.append, "a request that came in meanwhile")

        await RecordLater([first, lambda: order.append("second")])()
        return order, loop.time() - started

    order, took = asyncio.run(main())
    assert order == ["first", "a request that came in meanwhile", "second"]
    assert took >= RECORD_DELAY_S


def test_a_piece_of_an_answers_telemetry_that_raises_is_counted_and_the_rest_recorded() -> None:
    from unhardcoded.server.app import RecordLater
    from unhardcoded.telemetry import losses, reset_losses

    recorded: list[str] = []

    def broken() -> None:
        raise RuntimeError("an exporter's bug")

    reset_losses()
    asyncio.run(RecordLater([broken, lambda: recorded.append("after")])())
    assert recorded == ["after"]
    assert losses().errors == 1  # counted as telemetry/ counts its own failures, not dropped


@pytest.mark.parametrize("cancel_after", [0, 1], ids=["during-the-delay", "between-pieces"])
def test_a_server_stopping_mid_way_still_records_every_piece_once(cancel_after: int) -> None:
    from unhardcoded.server.app import RecordLater

    async def main() -> list[str]:
        recorded: list[str] = []
        task: asyncio.Task | None = None

        def piece(name: str) -> Any:
            def record() -> None:
                recorded.append(name)
                if len(recorded) == cancel_after and task is not None:
                    task.cancel()

            return record

        task = asyncio.ensure_future(RecordLater([piece("a"), piece("b"), piece("c")])())
        if cancel_after == 0:
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return recorded

    assert asyncio.run(main()) == ["a", "b", "c"]
