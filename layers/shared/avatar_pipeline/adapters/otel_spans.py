"""OpenTelemetry's side of `observability`: a span processor that names the job and task on every span started while
the pipeline works on one, and drops query strings from the URLs spans record.

Only imported under the ADOT wrapper, whose OpenTelemetry SDK (and botocore and httpx instrumentation) comes with its
layer: the shared layer ships none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Span, SpanProcessor
from opentelemetry.util.types import AttributeValue

from avatar_pipeline.observability import current_work

# Span attributes naming the work: `avatar.job`, `avatar.task_id`.
ATTRIBUTE_PREFIX = "avatar."
# Attributes that may hold a whole URL or its query: a presigned link's signature, a provider CDN's token, a
# callback's token. Their query strings are dropped (what remains names the host and path).
URL_ATTRIBUTES = frozenset({"url.full", "http.url", "http.target", "url.query"})

logger = logging.getLogger(__name__)


def scrubbed(key: str, value: AttributeValue) -> AttributeValue:
    """The attribute's value as it may be recorded: a URL without its query string, no query at all."""
    if key not in URL_ATTRIBUTES or not isinstance(value, str) or not value:
        return value
    return "" if key == "url.query" else value.split("?", 1)[0]


class TaskSpanStamper(SpanProcessor):
    """Acts only as a span starts (the base class's end, shutdown and flush do nothing, as nothing is held here).

    Adds `avatar.job` and `avatar.task_id` to each span as it starts, and keeps query strings out of its URLs: those
        it starts with, and those set later (the ADOT layer's Lambda instrumentation records an API Gateway request's
        target, query and all, once the handler has returned, when a span's processors are no longer asked)."""

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        try:
            for key, name in current_work().items():
                span.set_attribute(ATTRIBUTE_PREFIX + key, name)
            for key, value in dict(span.attributes or {}).items():
                if (clean := scrubbed(key, value)) != value:
                    span.set_attribute(key, clean)
            _scrub_later_attributes(span)
        except Exception:  # a span is never worth failing the call it records
            logger.exception("span not stamped")


def _scrub_later_attributes(span: Span) -> None:
    """Route the span's own attribute setters through `scrubbed` (the SDK asks no processor about later ones)."""
    set_attribute, set_attributes = span.set_attribute, span.set_attributes

    def set_one(key: str, value: AttributeValue) -> None:
        set_attribute(key, scrubbed(key, value))

    def set_many(attributes: Mapping[str, AttributeValue]) -> None:
        set_attributes({key: scrubbed(key, value) for key, value in attributes.items()})

    span.set_attribute = set_one  # type: ignore[method-assign]
    span.set_attributes = set_many  # type: ignore[method-assign]


def stamp_spans(provider: trace.TracerProvider | None = None) -> bool:
    """Add the stamper to the tracer provider (the global one by default); False when it is not the SDK's (no
    OpenTelemetry set up: spans are not recorded, so there is nothing to stamp)."""
    provider = provider or trace.get_tracer_provider()
    add = getattr(provider, "add_span_processor", None)
    if add is None:
        return False
    add(TaskSpanStamper())
    return True
