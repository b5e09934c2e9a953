"""Which job and task the code is working on: named on every log line and, when OpenTelemetry traces the function, on
every span started meanwhile (each AWS call and provider call), so one task can be followed across the functions.

Lambda's own active tracing needs nothing in here. Call-level spans come from the AWS Distro for OpenTelemetry layer
(the template's `OpenTelemetryLayerArn`), whose wrapper instruments botocore and httpx before the handler is imported;
`trace_calls` then adds the span processor of `adapters/otel_spans.py`. Without that layer nothing of OpenTelemetry (or
of the X-Ray SDK) is imported.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.exceptions import OrphanedChildLoggerError

logger = Logger(child=True)

# The wrapper Lambda runs the function through when the ADOT layer is attached (AWS_LAMBDA_EXEC_WRAPPER).
OTEL_WRAPPER = "/opt/otel-instrument"

WORK_KEYS = ("job", "task_id")

P = ParamSpec("P")
R = TypeVar("R")


def working_on(job: str | None, task_id: str | None = None) -> None:
    """From here on (until the handler's next invocation, or the next call), every log line and every span started
    names the job and task given; `working_on(None)` names none.

    Powertools loggers of one service share their keys, so the handler's lines carry them too.
    """
    work = {key: value for key, value in zip(WORK_KEYS, (job, task_id), strict=True) if value}
    try:
        logger.remove_keys(list(WORK_KEYS))
        if work:
            logger.append_keys(**work)
    except OrphanedChildLoggerError:
        pass  # no handler's logger in this process (a script or a unit test): nothing to enrich


def forgets_work(handler: Callable[P, R]) -> Callable[P, R]:
    """The handler's work is forgotten when it returns: the next invocation's own span starts before the handler runs
    (and before the logger's keys are cleared), so it would otherwise name this invocation's task."""

    @functools.wraps(handler)
    def invocation(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return handler(*args, **kwargs)
        finally:
            working_on(None)

    return invocation


def current_work() -> dict[str, str]:
    """The job and task the log lines name now (the handler's logger clears them at each invocation's start)."""
    try:
        keys = logger.get_current_keys()
    except OrphanedChildLoggerError:
        return {}
    return {key: str(value) for key in WORK_KEYS if (value := keys.get(key))}


def trace_calls() -> bool:
    """When the function runs under the OpenTelemetry wrapper, have every span name the work in hand and keep
    signed links and tokens out of span attributes; whether it does. Called once, at the handler's import."""
    if os.environ.get("AWS_LAMBDA_EXEC_WRAPPER") != OTEL_WRAPPER:
        return False
    from avatar_pipeline.adapters.otel_spans import stamp_spans

    return stamp_spans()
