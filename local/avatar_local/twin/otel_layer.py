"""The AWS Distro for OpenTelemetry Lambda layer, as the local runtime provides it.

A function given the ADOT layer (the template's `OpenTelemetryLayerArn`) runs under its wrapper
(`AWS_LAMBDA_EXEC_WRAPPER=/opt/otel-instrument`), which sets up OpenTelemetry's SDK and instruments the libraries its
`OTEL_PYTHON_DISABLED_INSTRUMENTATIONS` leaves on, before the handler is imported. The local runtime does the same with
the same open-source SDK and instrumentation (botocore and httpx are the ones the functions use), and writes each span
as a JSON line to the function's trace file, where Lambda's X-Ray daemon would take it.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

Handler = Callable[[Any, Any], Any]

# Not imported from the layer's observability module: the worker imports this module before it has the function's
# environment, and the layer's module-level logger would be made for the wrong service.
OTEL_WRAPPER: Final = "/opt/otel-instrument"
_ADOT_LAYER: Final = re.compile(r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:\d{12}:layer:AWSOpenTelemetryDistroPython:\d+$")


def is_adot_layer(arn: object) -> bool:
    """Whether `arn` is a version of AWS's OpenTelemetry layer for Python (which the local runtime stands in for)."""
    return isinstance(arn, str) and bool(_ADOT_LAYER.match(arn))


def start_tracing(spans_path: Path, environment: Mapping[str, str]) -> Callable[[Handler], Handler]:
    """What the wrapper does in the worker, before the handler's import: the SDK's tracer provider as the global one,
    writing every span to `spans_path`, and botocore and httpx instrumented unless the environment disables them.
    Returns what wraps the handler, once imported, as the layer's Lambda instrumentation does."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """Appends each finished span as OpenTelemetry's own JSON, a line each (the worker's threads share the file)."""

        def __init__(self) -> None:
            self._lock = threading.Lock()
            spans_path.parent.mkdir(parents=True, exist_ok=True)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
            with self._lock, spans_path.open("a", encoding="utf-8") as out:
                out.write(lines)
            return SpanExportResult.SUCCESS

    disabled = {name.strip() for name in environment.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    service = environment.get("OTEL_SERVICE_NAME") or environment.get("AWS_LAMBDA_FUNCTION_NAME", "function")
    provider = TracerProvider(resource=Resource.create({"service.name": service, "cloud.platform": "aws_lambda"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter()))
    trace.set_tracer_provider(provider)
    if "botocore" not in disabled:
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

        BotocoreInstrumentor().instrument()  # type: ignore[no-untyped-call]
    if "httpx" not in disabled:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor().instrument()
    return functools.partial(_in_invocation_span, service)


def _in_invocation_span(function_name: str, handler: Handler) -> Handler:
    """Each invocation in a server span of its own, as the ADOT layer's copy of OpenTelemetry's Lambda instrumentation
    makes it: started before the handler runs, and, for an API Gateway request, its target (query string and all)
    recorded once the handler has returned."""
    from opentelemetry import trace

    tracer = trace.get_tracer("opentelemetry.instrumentation.aws_lambda")

    def invocation(event: Any, context: Any) -> Any:
        with tracer.start_as_current_span(function_name, kind=trace.SpanKind.SERVER) as span:
            result = handler(event, context)
            if isinstance(event, dict) and isinstance(event.get("resource"), str):
                query = event.get("queryStringParameters")
                span.set_attribute("http.target", event["resource"] + (f"?{urlencode(query)}" if query else ""))
            return result

    return invocation
