"""One task followed through the functions by its spans (the issue's acceptance: a provider call and each AWS call of a
task can be followed across the functions, the task id on every span), against moto and a respx-mocked provider.

Emulates what the ADOT layer's wrapper and `trace_calls` do in Lambda: an SDK tracer provider, botocore and httpx
instrumented with it, and the stamper of `adapters/otel_spans.py` added to it. The spans are kept in memory, each with
the handler invocation it started in: the test's own calls (creating moto's resources, uploading as a user would,
reading the table to check the outcome) start outside every invocation and are no function's work.

botocore's instrumentation wraps the client's API call, so moto's in-process answers are traced too; respx replaces
httpcore's connection pool, under httpx's transport, so the httpx instrumentation (which wraps the transport's
`handle_request`) traces the mocked calls as it would real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import boto3
import httpx
import pytest
import respx
from dispatch_handler import lambda_handler as dispatch_handler
from finalize_handler import lambda_handler as finalize_handler
from handlers.helpers import (
    MP3_BYTES,
    OTHER_MP3_BYTES,
    OTHER_PNG_BYTES,
    PNG_BYTES,
    TaskStream,
    dispatch_context,
    mock_wavespeed_submit,
    prediction,
    upload,
)
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from submit_handler import lambda_handler as submit_handler
from support.aws import REGION, TABLE, WAVESPEED_BASE_URL, WEBHOOK_SECRET, Stack
from support.events import FakeLambdaContext, api_post, signed_headers, stream_event
from support.fakes import callback_query
from support.mp4 import fake_mp4
from webhook_handler import lambda_handler as webhook_handler

from avatar_pipeline.adapters.otel_spans import stamp_spans
from avatar_pipeline.domain.models import TaskStatus
from avatar_pipeline.observability import working_on
from avatar_pipeline.wiring import pipeline

JOB = "fay"
PREDICTION_ID = "f" * 32
SUBMIT_URL = f"{WAVESPEED_BASE_URL}/api/v3/kwaivgi/kling-v1-ai-avatar-standard"
# The provider's CDN link to the video, with the token such links carry.
OUTPUT_URL = "https://d111111abcdef8.cloudfront.net/output/fay.mp4?token=cdn-s3cr3t"
MP4_BYTES = fake_mp4(4096)
BOTOCORE = "opentelemetry.instrumentation.botocore"
HTTPX = "opentelemetry.instrumentation.httpx"
# What would give away a signed link or a token, were it recorded on a span.
SECRETS_IN_URLS = ("token=", "X-Amz-Signature", "X-Amz-Credential")


class Invocation(NamedTuple):
    function: str  # submit, dispatch, webhook, finalize
    number: int  # the test's invocations, counted from 1


def touched(api_params: dict[str, Any]) -> frozenset[str]:
    """The records and objects an AWS call names: the task table's keys (TASK#…, JOB#…, QUOTA#…), the index a query
    reads (index:…), S3 object keys (s3:…)."""
    found: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key == "pk" and isinstance(inner, str):
                    found.add(inner)
                elif key == "IndexName":
                    found.add(f"index:{inner}")
                elif key == "Key" and isinstance(inner, str):
                    found.add(f"s3:{inner}")
                else:
                    visit(inner)
        elif isinstance(value, list):
            for inner in value:
                visit(inner)

    visit(api_params)
    return frozenset(found)


class Tracing(SpanProcessor):
    """The functions' calls traced as under the ADOT wrapper, kept in memory; and for each span, the handler
    invocation it started in (none for the test's own calls), its place in the order spans started, and what its AWS
    call named."""

    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.exporter = InMemorySpanExporter()
        self.provider.add_span_processor(self)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        assert stamp_spans(self.provider) is True  # what trace_calls does at the handler's import
        self._current: Invocation | None = None
        self._invocations = 0
        self._started_in: dict[int, Invocation] = {}
        self._order: dict[int, int] = {}
        self._touched: dict[int, frozenset[str]] = {}

    # SpanProcessor
    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        span_id = span.get_span_context().span_id
        self._order[span_id] = len(self._order)
        if self._current is not None:
            self._started_in[span_id] = self._current

    def note_request(self, span: Span, service: str, operation: str, api_params: dict[str, Any]) -> None:
        """botocore's request hook: what the call names."""
        self._touched[span.get_span_context().span_id] = touched(api_params)

    @contextmanager
    def instrumented(self) -> Iterator[None]:
        """botocore and httpx traced into this provider, as the ADOT wrapper instruments them; undone after."""
        botocore = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
        botocore.instrument(tracer_provider=self.provider, request_hook=self.note_request)
        try:
            HTTPXClientInstrumentor().instrument(tracer_provider=self.provider)
            try:
                yield
            finally:
                HTTPXClientInstrumentor().uninstrument()
        finally:
            botocore.uninstrument()
            self.provider.shutdown()

    def invoke(self, function: str, handler: Callable[..., Any], event: dict[str, Any], context: Any) -> Any:
        """One invocation of a function's handler, its spans labelled with it."""
        self._invocations += 1
        self._current = Invocation(function, self._invocations)
        try:
            return handler(event, context)
        finally:
            self._current = None

    # what was recorded
    def spans(self) -> list[ReadableSpan]:
        """Every span recorded, in the order they started."""
        return sorted(self.exporter.get_finished_spans(), key=self.order)

    def handler_spans(self) -> list[ReadableSpan]:
        """The spans started inside handler invocations, in the order they started."""
        return [span for span in self.spans() if self.invocation(span) is not None]

    def invocation(self, span: ReadableSpan) -> Invocation | None:
        return self._started_in.get(span_id(span))

    def order(self, span: ReadableSpan) -> int:
        return self._order[span_id(span)]

    def touched(self, span: ReadableSpan) -> frozenset[str]:
        return self._touched.get(span_id(span), frozenset())


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def scope(span: ReadableSpan) -> str:
    """The instrumentation that recorded it: botocore's (whose per-service extensions name scopes of their own,
    `….botocore.dynamodb`) or httpx's."""
    name = span.instrumentation_scope.name if span.instrumentation_scope else ""
    return BOTOCORE if name.startswith(f"{BOTOCORE}.") else name


def call(span: ReadableSpan) -> str:
    """`DynamoDB.GetItem`, `S3.UploadPart`, `POST https://…` (as recorded)."""
    found = attributes(span)
    if scope(span) == HTTPX:
        return f"{found.get('http.method')} {found.get('http.url')}"
    return f"{found.get('rpc.service')}.{found.get('rpc.method')}"


@pytest.fixture
def tracing(stack: Stack) -> Iterator[Tracing]:
    recorded = Tracing()
    with recorded.instrumented():
        yield recorded
    working_on(None)  # the last invocation's work stays on the shared logger otherwise


# --- driving the functions, as their event sources would ----------------------------------------------------------


def deliver_upload(tracing: Tracing, stack: Stack, key: str, body: bytes) -> dict[str, Any]:
    event = upload(stack, key, body)  # the user's upload: the test's own call
    return tracing.invoke("submit", submit_handler, event, FakeLambdaContext())  # type: ignore[no-any-return]


def queue_pair(tracing: Tracing, stack: Stack, job: str, *, other: bool = False) -> str:
    deliver_upload(tracing, stack, f"inbox/{job}/face.png", OTHER_PNG_BYTES if other else PNG_BYTES)
    answer = deliver_upload(tracing, stack, f"inbox/{job}/voice.mp3", OTHER_MP3_BYTES if other else MP3_BYTES)
    (result,) = answer["results"]
    assert result["action"] == "queued", result
    return str(result["task_id"])


def settle_dispatcher(tracing: Tracing, task_stream: TaskStream) -> None:
    """Hand the dispatcher the stream's changes its filters let through, a batch per invocation, until its own
    writes send it nothing more."""
    size = task_stream.source.batch_size
    for _ in range(10):
        records = task_stream.for_dispatch()
        if not records:
            return
        for at in range(0, len(records), size):
            tracing.invoke("dispatch", dispatch_handler, {"Records": records[at : at + size]}, dispatch_context())
    raise AssertionError("the line kept moving")


def signed_completion(task_id: str) -> dict[str, Any]:
    """WaveSpeed's signed webhook saying the prediction completed, to the task's callback URL (with its token)."""
    raw = json.dumps(prediction(PREDICTION_ID, "completed", outputs=[OUTPUT_URL])).encode()
    headers = signed_headers(raw, WEBHOOK_SECRET, "msg_tracing", int(time.time()))
    event: dict[str, Any] = api_post("wavespeed", callback_query("wavespeed", task_id), raw, headers)
    return event


def deliver_stream_change(tracing: Tracing, task_id: str) -> dict[str, Any]:
    """The table stream's record of the task's latest write, to finalize."""
    table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
    item = table.get_item(Key={"pk": f"TASK#{task_id}"}, ConsistentRead=True)["Item"]
    context = FakeLambdaContext(remaining_ms=900_000)
    return tracing.invoke("finalize", finalize_handler, stream_event(item), context)  # type: ignore[no-any-return]


def status_of(task_id: str) -> TaskStatus:
    task = pipeline().tasks.get(task_id)
    assert task is not None
    return task.status


@pytest.fixture
def traced_task(stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, tracing: Tracing) -> str:
    """One WaveSpeed task through the functions: its pair submitted, sent by the dispatcher, reported completed by a
    signed webhook, copied and announced by finalize, its render slot freed by the dispatcher. Its id."""
    mock_wavespeed_submit(provider_http, PREDICTION_ID)
    provider_http.get(OUTPUT_URL).mock(return_value=httpx.Response(200, content=MP4_BYTES))
    task_id = queue_pair(tracing, stack, JOB)
    settle_dispatcher(tracing, task_stream)
    assert status_of(task_id) is TaskStatus.SUBMITTED
    answer = tracing.invoke("webhook", webhook_handler, signed_completion(task_id), FakeLambdaContext())
    assert answer["statusCode"] == 200 and status_of(task_id) is TaskStatus.OUTPUT_READY
    assert deliver_stream_change(tracing, task_id) == {"batchItemFailures": []}  # the copy
    assert deliver_stream_change(tracing, task_id) == {"batchItemFailures": []}  # the notification
    settle_dispatcher(tracing, task_stream)  # the task left WaveSpeed: its render slot is given back
    assert status_of(task_id) is TaskStatus.COMPLETED
    assert [n["body"]["status"] for n in stack.notifications()] == ["COMPLETED"]
    return task_id


# --- the task on every span ----------------------------------------------------------------------------------------


def test_a_provider_call_and_each_aws_call_of_a_task_name_the_task_across_the_functions(
    traced_task: str, tracing: Tracing
) -> None:
    # Given one task driven through submit, dispatch, webhook and finalize with calls traced
    # When we look at the spans the functions started
    spans = tracing.handler_spans()
    named = [span for span in spans if "avatar.task_id" in attributes(span)]
    unnamed = [span for span in spans if "avatar.task_id" not in attributes(span)]
    # Then each is an AWS call or an HTTP call, and those that name a task name this one, in each function
    assert {scope(span) for span in spans} == {BOTOCORE, HTTPX}
    assert {attributes(span)["avatar.task_id"] for span in named} == {traced_task}
    assert {tracing.invocation(span).function for span in named} == {"submit", "dispatch", "webhook", "finalize"}  # type: ignore[union-attr]
    # with the job where the function knows it (a callback names only its task until the task is read)
    assert {attributes(span).get("avatar.job") for span in named} <= {JOB, None}
    # the provider call, once, from the dispatcher
    posts = [span for span in named if call(span) == f"POST {SUBMIT_URL}"]
    assert [tracing.invocation(span).function for span in posts] == ["dispatch"]  # type: ignore[union-attr]
    # the download of the provider's video, and the AWS calls that record, store and announce the task
    assert f"GET {OUTPUT_URL.split('?')[0]}" in {call(span) for span in named}
    assert {
        "DynamoDB.TransactWriteItems",  # the pair cut into a task; then its admission
        "DynamoDB.PutItem",  # each of its changes
        "S3.GetObject",  # its inputs checked
        "S3.CompleteMultipartUpload",  # its video stored
        "SNS.Publish",  # its notification
        "Secrets Manager.GetSecretValue",  # the provider's key and the webhook secret, read for it
    } <= {call(span) for span in named}

    # And the calls that name no task are exactly those made before a task was cut or chosen, or after it left its
    # provider, each for a reason:
    cut_or_chosen: dict[Invocation | None, int] = {}  # the invocation → where in it the task was first named
    for span in named:
        cut_or_chosen.setdefault(tracing.invocation(span), tracing.order(span))
    for span in unnamed:
        invocation = tracing.invocation(span)
        assert invocation is not None
        before_the_task = invocation in cut_or_chosen and tracing.order(span) < cut_or_chosen[invocation]
        what = (invocation.function, call(span), sorted(tracing.touched(span)), before_the_task)
        if invocation.function == "submit":
            # - the submit function, until the upload completes the pair and the pair is cut: the job's pair slot
            #   read and written, and the look-up of whether these files already made their task; the job is named
            assert invocation not in cut_or_chosen or before_the_task, what
            assert attributes(span).get("avatar.job") == JOB, what
            assert tracing.touched(span) in ({f"JOB#{JOB}"}, {f"TASK#{traced_task}"}), what
            assert call(span) in {"DynamoDB.GetItem", "DynamoDB.PutItem"}, what
        elif invocation.function == "dispatch" and invocation in cut_or_chosen:
            # - the dispatcher, before it chooses the task from WaveSpeed's line: the line's quota record, the
            #   line's index, and the task's record (is it still waiting in this line?), read; and once the task is
            #   sent, the next turn's look at the line (the same reads), which is no task's until one is chosen
            assert tracing.touched(span) in ({"QUOTA#wavespeed"}, {"index:queue"}, {f"TASK#{traced_task}"}), what
            assert call(span) in {"DynamoDB.GetItem", "DynamoDB.Query"}, what
        elif invocation.function == "dispatch":
            # - the dispatcher, once the task left WaveSpeed (the render's end, in the stream): freeing its render
            #   slot (the quota record read and written, the task's record read to see it holds none any more), then
            #   every provider's line read for a task to send. Nothing is chosen, so nothing is named: the slot's
            #   release, though done for this one task, does not name it (release() handles a set of tasks)
            assert tracing.touched(span) in ({"QUOTA#wavespeed"}, {"index:queue"}, {f"TASK#{traced_task}"}), what
            assert call(span) in {"DynamoDB.GetItem", "DynamoDB.Query"} or (
                call(span) == "DynamoDB.PutItem" and tracing.touched(span) == {"QUOTA#wavespeed"}
            ), what
        else:
            # - the webhook and finalize name the task on every call
            raise AssertionError(f"{what}: a call of the {invocation.function} function names no task")
    # and each of those reasons did occur (the test saw what it describes)
    functions_unnamed = [tracing.invocation(span).function for span in unnamed]  # type: ignore[union-attr]
    assert set(functions_unnamed) == {"submit", "dispatch"}


def test_no_span_records_a_signed_link_or_a_callback_token(traced_task: str, tracing: Tracing) -> None:
    # Given one task driven through the functions: its inputs sent as presigned links, its callback URL carrying a
    # token, its video fetched from a CDN link with a token, its notification linking the video with a presigned URL
    # When we look at every attribute of every span recorded (the test's own calls too)
    recorded = [(span.name, key, str(value)) for span in tracing.spans() for key, value in attributes(span).items()]
    # Then none holds a query string that gives away a signature, a credential or a token
    leaks = [(name, key, value) for name, key, value in recorded if any(s in value for s in SECRETS_IN_URLS)]
    assert leaks == []
    # while the CDN link was traced, without its query
    downloads = [
        span for span in tracing.handler_spans() if scope(span) == HTTPX and attributes(span)["http.method"] == "GET"
    ]
    assert [attributes(span)["http.url"] for span in downloads] == [OUTPUT_URL.split("?")[0]]
    assert attributes(downloads[0])["avatar.task_id"] == traced_task


# --- between tasks and between invocations ------------------------------------------------------------------------


def test_a_call_that_reads_one_tasks_record_never_names_another_task(
    stack: Stack, provider_http: respx.MockRouter, task_stream: TaskStream, tracing: Tracing
) -> None:
    # Given two pairs in WaveSpeed's line, which has room for both
    mock_wavespeed_submit(provider_http, PREDICTION_ID)
    first = queue_pair(tracing, stack, "fay")
    second = queue_pair(tracing, stack, "gus", other=True)
    # When the dispatcher sends them, one after the other
    settle_dispatcher(tracing, task_stream)
    assert status_of(first) is status_of(second) is TaskStatus.SUBMITTED
    # Then a call about one task's record names that task or none, never the other
    misnamed = [
        (call(span), sorted(tracing.touched(span)), attributes(span)["avatar.task_id"])
        for span in tracing.handler_spans()
        if "avatar.task_id" in attributes(span)
        and any(key.startswith("TASK#") for key in tracing.touched(span))
        and f"TASK#{attributes(span)['avatar.task_id']}" not in tracing.touched(span)
    ]
    assert misnamed == []


def test_an_invocations_own_span_names_no_task_of_an_earlier_invocation(stack: Stack, tracing: Tracing) -> None:
    # Given the container's last invocation, the submit function's, cut a pair into a task
    queue_pair(tracing, stack, JOB)
    # When the next invocation runs inside its own span, as the Lambda instrumentation starts one before calling the
    # handler: a callback that names no task
    tracer = tracing.provider.get_tracer("opentelemetry.instrumentation.aws_lambda")
    with tracer.start_as_current_span("webhook", kind=SpanKind.SERVER) as invocation_span:
        event = api_post("wavespeed", {}, b"{}", {"content-type": "application/json"})
        answer = tracing.invoke("webhook", webhook_handler, event, FakeLambdaContext())
    # Then the callback is refused, and its invocation's span names no task
    assert answer["statusCode"] == 400
    assert "avatar.task_id" not in attributes(invocation_span)  # type: ignore[arg-type]
