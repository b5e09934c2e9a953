"""Which job and task the code works on (`observability`), and how OpenTelemetry spans come to name them: the span
processor of `adapters/otel_spans.py` on an SDK tracer provider recording into memory, and `trace_calls`, which adds
it only under the ADOT layer's wrapper. No global tracer provider is ever set (OpenTelemetry sets it once per
process): each test hands its own provider over, or stands it in for the global one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from avatar_pipeline.adapters import otel_spans
from avatar_pipeline.adapters.otel_spans import stamp_spans
from avatar_pipeline.observability import OTEL_WRAPPER, current_work, trace_calls, working_on

JOB = "alice"
TASK_ID = "0123456789abcdef0123456789abcdef"
NAMED = {"avatar.job": JOB, "avatar.task_id": TASK_ID}


@pytest.fixture(autouse=True)
def handler_logger() -> Iterator[Logger]:
    """The service's Logger, as each handler module creates one at import: the layer's child loggers (and so
    `working_on`) share its keys. Nothing named before or after each test."""
    logger = Logger()
    working_on(None)
    yield logger
    working_on(None)


class Recorder:
    """An SDK tracer provider recording every ended span into memory."""

    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.exporter = InMemorySpanExporter()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer(__name__)

    def span(self, name: str = "call", **attributes: Any) -> ReadableSpan:
        """Start a span with these attributes, end it, and return it as exported."""
        with self.tracer.start_as_current_span(name, attributes=attributes):
            pass
        return self.exporter.get_finished_spans()[-1]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def stamped(recorder: Recorder) -> Recorder:
    """A recorder whose provider has the stamper, as `trace_calls` adds it under the ADOT wrapper."""
    assert stamp_spans(recorder.provider) is True
    return recorder


def avatar_attributes(span: ReadableSpan) -> dict[str, Any]:
    return {key: value for key, value in (span.attributes or {}).items() if key.startswith("avatar.")}


# --- working_on / current_work ---------------------------------------------------------------------------------


def test_working_on_names_the_job_and_task_until_it_names_none() -> None:
    # Given nothing is named yet
    assert current_work() == {}
    # When the code starts working on a task of a job
    working_on(JOB, TASK_ID)
    # Then both are named
    assert current_work() == {"job": JOB, "task_id": TASK_ID}
    # When it moves on to another job, with no task yet
    working_on("bob")
    # Then only that job is named: the earlier task is not kept
    assert current_work() == {"job": "bob"}
    # When it works on nothing in particular
    working_on(None)
    # Then nothing is named
    assert current_work() == {}


def test_working_on_a_task_alone_names_only_the_task() -> None:
    # Given a job was named earlier
    working_on(JOB, TASK_ID)
    # When the code works on a task whose job it does not know yet (a callback names only the task)
    working_on(None, "t")
    # Then only the task is named
    assert current_work() == {"task_id": "t"}


def test_working_on_names_the_work_on_the_handlers_log_lines(handler_logger: Logger) -> None:
    # When the code works on a task
    working_on(JOB, TASK_ID)
    # Then the handler's own logger carries the job and task on its lines too
    keys = handler_logger.get_current_keys()
    assert (keys.get("job"), keys.get("task_id")) == (JOB, TASK_ID)


# --- the span stamper ------------------------------------------------------------------------------------------


def test_spans_started_while_working_on_a_task_name_it_and_no_others_do(stamped: Recorder) -> None:
    # Given a span started before any work was named
    before = stamped.span("before")
    # When the code works on a task, and a span starts
    working_on(JOB, TASK_ID)
    during = stamped.span("during")
    # and then works on nothing in particular, and another starts
    working_on(None)
    after = stamped.span("after")
    # Then only the span started meanwhile names the job and the task
    assert avatar_attributes(during) == NAMED
    assert avatar_attributes(before) == {}
    assert avatar_attributes(after) == {}


def test_a_span_started_while_working_on_a_task_alone_names_only_the_task(stamped: Recorder) -> None:
    # When the code works on a task whose job it does not know yet, and a span starts
    working_on(None, TASK_ID)
    span = stamped.span()
    # Then it names the task and no job
    assert avatar_attributes(span) == {"avatar.task_id": TASK_ID}


SIGNED_LINK = (
    "https://avatar-media.s3.amazonaws.com/inbox/alice/face.png"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261121&X-Amz-Signature=0badc0de"
)
CALLBACK = "/webhooks/wavespeed?task_id=0123456789abcdef0123456789abcdef&token=s3cr3t"


@pytest.mark.parametrize(
    ("attribute", "recorded", "kept"),
    [
        ("url.full", SIGNED_LINK, "https://avatar-media.s3.amazonaws.com/inbox/alice/face.png"),
        ("http.url", "https://cdn.example/out.mp4?token=s3cr3t", "https://cdn.example/out.mp4"),
        ("http.target", CALLBACK, "/webhooks/wavespeed"),
    ],
)
def test_a_url_a_span_starts_with_loses_its_query_string(
    stamped: Recorder, attribute: str, recorded: str, kept: str
) -> None:
    # When a span starts recording a URL with a query string (a signed link, a token)
    span = stamped.span(**{attribute: recorded})
    # Then the span keeps the URL without its query: scheme, host and path
    assert (span.attributes or {})[attribute] == kept


def test_the_query_a_span_starts_with_is_blanked(stamped: Recorder) -> None:
    # When a span starts recording a URL's query on its own
    span = stamped.span(**{"url.full": "https://cdn.example/out.mp4", "url.query": "token=s3cr3t"})
    # Then the query is blanked, and the URL (which had none) is left as it was
    assert (span.attributes or {})["url.query"] == ""
    assert (span.attributes or {})["url.full"] == "https://cdn.example/out.mp4"


def test_a_url_without_a_query_string_is_kept_as_recorded(stamped: Recorder) -> None:
    # When a span starts recording URLs without query strings
    attributes = {
        "url.full": "https://api.wavespeed.ai/api/v3/kwaivgi/kling-v1-ai-avatar-standard",
        "http.url": "https://cdn.example/out.mp4",
        "http.target": "/webhooks/wavespeed",
        "server.address": "api.wavespeed.ai",
    }
    span = stamped.span(**attributes)
    # Then they are exactly as recorded
    assert dict(span.attributes or {}) == attributes


def test_a_query_string_given_when_the_span_starts_is_dropped() -> None:
    # Given the exporting processor comes first and the stamper after it, as under the ADOT wrapper (the layer
    # configures the SDK, then the handler's import adds the stamper)
    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    assert stamp_spans(provider) is True
    # When an invocation span starts with the callback's target (and its token) among its attributes, as
    # OpenTelemetry's Lambda instrumentation (0.66) starts the span of an API Gateway event
    tracer = provider.get_tracer("opentelemetry.instrumentation.aws_lambda")
    with tracer.start_as_current_span("webhook", attributes={"http.target": CALLBACK}):
        pass
    provider.force_flush()
    # Then the exported span keeps no token
    (exported,) = exporter.get_finished_spans()
    assert (exported.attributes or {})["http.target"] == "/webhooks/wavespeed"


@pytest.mark.parametrize("how", ["set_attribute", "set_attributes"])
def test_a_query_string_recorded_after_the_span_started_is_dropped_too(how: str) -> None:
    # Given the exporting processor comes first and the stamper after it, as under the ADOT wrapper
    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    assert stamp_spans(provider) is True
    # When an invocation span records the callback's target (and its token) once the handler has returned, as the
    # ADOT layer's own copy of the Lambda instrumentation does for an API Gateway event
    with provider.get_tracer("opentelemetry.instrumentation.aws_lambda").start_as_current_span("webhook") as span:
        if how == "set_attribute":
            span.set_attribute("http.target", CALLBACK)
        else:
            span.set_attributes({"http.target": CALLBACK, "http.method": "POST"})
    provider.force_flush()
    # Then the exported span keeps no token, and the other attributes as set
    (exported,) = exporter.get_finished_spans()
    assert (exported.attributes or {})["http.target"] == "/webhooks/wavespeed"
    assert how == "set_attribute" or (exported.attributes or {})["http.method"] == "POST"


def test_a_span_that_cannot_be_stamped_is_still_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given reading the work in hand fails (say, another thread changing the logger's keys meanwhile)
    def broken() -> dict[str, str]:
        raise KeyError("task_id")

    monkeypatch.setattr(otel_spans, "current_work", broken)
    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stamp_spans(provider)
    # When a span starts and ends
    with provider.get_tracer("test").start_as_current_span("call"):
        pass
    # Then the call it records went on, and the span was recorded, unstamped
    assert [span.name for span in exporter.get_finished_spans()] == ["call"]


# --- stamp_spans / trace_calls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [trace.ProxyTracerProvider(), trace.NoOpTracerProvider()])
def test_stamp_spans_refuses_the_apis_own_provider(provider: trace.TracerProvider) -> None:
    # When the stamper is offered the API's default provider (no SDK set up: nothing is recorded)
    # Then it says it added nothing
    assert stamp_spans(provider) is False


def test_stamp_spans_uses_the_global_provider_by_default(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> None:
    # Given no SDK is set up: the global provider is the API's proxy
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    # Then there is nothing to stamp
    assert stamp_spans() is False
    # Given the global provider is the SDK's
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: recorder.provider)
    # When the stamper is added without naming a provider
    assert stamp_spans() is True
    # Then the global provider's spans name the work
    working_on(JOB, TASK_ID)
    assert avatar_attributes(recorder.span()) == NAMED


@pytest.mark.parametrize("wrapper", [None, "/opt/other-wrapper"])
def test_trace_calls_does_nothing_without_the_otel_wrapper(
    monkeypatch: pytest.MonkeyPatch, recorder: Recorder, wrapper: str | None
) -> None:
    # Given the function does not run under the ADOT wrapper, though an SDK provider is the global one
    if wrapper is None:
        monkeypatch.delenv("AWS_LAMBDA_EXEC_WRAPPER", raising=False)
    else:
        monkeypatch.setenv("AWS_LAMBDA_EXEC_WRAPPER", wrapper)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: recorder.provider)
    # When the handler's import asks for call tracing
    # Then it says it did not set it up, and spans name no work
    assert trace_calls() is False
    working_on(JOB, TASK_ID)
    assert avatar_attributes(recorder.span()) == {}


def test_trace_calls_stamps_the_global_providers_spans_under_the_otel_wrapper(
    monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    # Given the function runs under the ADOT wrapper, which set up the SDK's provider as the global one
    monkeypatch.setenv("AWS_LAMBDA_EXEC_WRAPPER", OTEL_WRAPPER)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: recorder.provider)
    # When the handler's import asks for call tracing
    assert trace_calls() is True
    # Then spans started while working on a task name it, and lose their query strings
    working_on(JOB, TASK_ID)
    span = recorder.span(**{"http.url": "https://cdn.example/out.mp4?token=s3cr3t"})
    assert avatar_attributes(span) == NAMED
    assert (span.attributes or {})["http.url"] == "https://cdn.example/out.mp4"


def test_trace_calls_under_the_wrapper_without_an_sdk_provider_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the wrapper is named but no SDK provider was set up (the API's proxy is the global one)
    monkeypatch.setenv("AWS_LAMBDA_EXEC_WRAPPER", OTEL_WRAPPER)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    # When the handler's import asks for call tracing
    # Then it says there is nothing to stamp
    assert trace_calls() is False
