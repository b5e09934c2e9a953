"""OpenTelemetry's side of `observability`: a span processor that names the job and task on every span started while
the pipeline works on one, and drops query strings from the URLs spans record.

Only imported under the ADOT wrapper, whose OpenTelemetry SDK (and botocore and httpx instrumentation) comes with its
layer: the shared layer ships none of it.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from avatar_pipeline.observability import current_work

# Span attributes naming the work: `avatar.job`, `avatar.task_id`.
ATTRIBUTE_PREFIX = "avatar."
# Attributes that may hold a whole URL or its query: a presigned link's signature, a provider CDN's token, a
# callback's token. Their query strings are dropped (what remains names the host and path).
URL_ATTRIBUTES = ("url.full", "http.url", "http.target", "url.query")


def without_query(value: str) -> str:
    return value.split("?", 1)[0] if "?" in value else value


class TaskSpanStamper(SpanProcessor):
    """Adds `avatar.job` and `avatar.task_id` to each span as it starts, and strips query strings from its URLs."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        for key, name in current_work().items():
            span.set_attribute(ATTRIBUTE_PREFIX + key, name)
        for key in URL_ATTRIBUTES:
            recorded = (span.attributes or {}).get(key)
            if isinstance(recorded, str) and recorded and (key == "url.query" or "?" in recorded):
                span.set_attribute(key, "" if key == "url.query" else without_query(recorded))

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def stamp_spans(provider: trace.TracerProvider | None = None) -> bool:
    """Add the stamper to the tracer provider (the global one by default); False when it is not the SDK's (no
    OpenTelemetry set up: spans are not recorded, so there is nothing to stamp)."""
    provider = provider or trace.get_tracer_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        return False
    add(TaskSpanStamper())
    return True
