"""Faults the local stack injects on the AWS side: into the functions' AWS calls, and into S3 event delivery.

A function's worker process installs the plan before it imports the handler. From then on every botocore client made
in that process may be answered, instead of by the embedded AWS, with the error AWS itself would send — DynamoDB
throttling, an SNS outage — so the SDK's own retries and the pipeline's handling both run; or the process may die
in the middle of a call, as a Lambda execution environment does when it runs out of memory or time mid-copy.
Decisions are drawn from a random source seeded with the plan's seed, the function's name and the worker's number.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.httpsession import URLLib3Session
from pydantic import BaseModel, ConfigDict, Field

from avatar_local.simulators.faults import Rate, SeededDecider

logger = logging.getLogger("avatar_local")

# The exit status of a worker that was made to crash (what Lambda reports as "Runtime exited with error").
CRASH_EXIT_STATUS = 86


class AwsFaultPlan(BaseModel):
    """What AWS gets wrong during a local run. The defaults inject nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    dynamodb_throttle_rate: Rate = 0.0
    """DynamoDB calls answered with ProvisionedThroughputExceededException (the SDK retries these itself)."""
    sns_publish_error_rate: Rate = 0.0
    """SNS Publish calls answered with HTTP 500 InternalFailure."""
    events_throttle_rate: Rate = 0.0
    """EventBridge PutEvents calls not put, every entry answered ThrottlingException (a partial-failure answer)."""
    events_answer_lost_rate: Rate = 0.0
    """PutEvents calls put on the bus, but answered as if every entry was throttled: the caller resends, and the
    bus's targets get each event twice (with the same event id)."""
    crash_rate: Rate = 0.0
    crash_operations: tuple[str, ...] = ("s3.UploadPart",)
    """Calls (``service.Operation``) during which the worker process dies, at `crash_rate`."""
    s3_duplicate_event_rate: Rate = 0.0
    """S3 notifications delivered twice (S3 delivers at least once)."""
    s3_event_max_delay_seconds: float = Field(default=0.0, ge=0.0)
    """Each S3 notification waits a random time up to this long, so events arrive out of order."""

    @property
    def touches_functions(self) -> bool:
        rates = (
            self.dynamodb_throttle_rate,
            self.sns_publish_error_rate,
            self.crash_rate,
            self.events_throttle_rate,
            self.events_answer_lost_rate,
        )
        return any(rate > 0 for rate in rates)


def install(plan: AwsFaultPlan, function_name: str, worker_number: int) -> None:
    """Make every botocore session created in this process from now on carry the plan's faults."""
    if not plan.touches_functions:
        return
    decider = SeededDecider(zlib.crc32(f"{plan.seed}:{function_name}:{worker_number}".encode()))

    def inject(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        service, operation = event_name.split(".", 2)[1:]
        if f"{service}.{operation}" in plan.crash_operations and decider.should(plan.crash_rate):
            _note(f"crashed {function_name} worker {worker_number} during {service}.{operation}")
            os._exit(CRASH_EXIT_STATUS)
        if service == "dynamodb" and decider.should(plan.dynamodb_throttle_rate):
            _note(f"throttled {service}.{operation}")
            return _dynamodb_throttled(request.url)
        if service == "sns" and operation == "Publish" and decider.should(plan.sns_publish_error_rate):
            _note(f"sns-failed {service}.{operation}")
            return _sns_internal_failure(request.url)
        if service == "eventbridge" and operation == "PutEvents":
            return _put_events_fault(plan, decider, request)
        return None

    original_init = botocore.session.Session.__init__

    def init_with_faults(self: botocore.session.Session, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.register("before-send", inject)

    botocore.session.Session.__init__ = init_with_faults  # type: ignore[method-assign]


def _put_events_fault(plan: AwsFaultPlan, decider: SeededDecider, request: Any) -> AWSResponse | None:
    """Throttle a PutEvents call (nothing put), or lose its answer (put, but answered throttled); None to let it
    through."""
    if decider.should(plan.events_answer_lost_rate):
        URLLib3Session().send(request)  # put on the bus for real; the answer is what goes missing
        _note("events-answer-lost events.PutEvents")
    elif decider.should(plan.events_throttle_rate):
        _note("events-throttled events.PutEvents")
    else:
        return None
    entries = json.loads(request.body or b"{}").get("Entries", [])
    failed = [{"ErrorCode": "ThrottlingException", "ErrorMessage": "Rate exceeded (injected)"}] * len(entries)
    body = json.dumps({"FailedEntryCount": len(entries), "Entries": failed}).encode()
    return _response(request.url, 200, "application/x-amz-json-1.1", body)


def _note(what: str) -> None:
    """One line in the function's log per injected fault (a chaos run counts them)."""
    print(f"chaos: {what}", flush=True)


class _RawBody:
    """The minimal urllib3-like body botocore reads an `AWSResponse` from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data


def _response(url: str, status: int, content_type: str, body: bytes) -> AWSResponse:
    headers = {"Content-Type": content_type, "x-amzn-RequestId": str(uuid.uuid4()), "Content-Length": str(len(body))}
    return AWSResponse(url, status, headers, _RawBody(body))


def _dynamodb_throttled(url: str) -> AWSResponse:
    body = {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded (injected).",
    }
    return _response(url, 400, "application/x-amz-json-1.0", json.dumps(body).encode())


def _sns_internal_failure(url: str) -> AWSResponse:
    body = (
        "<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code>"
        "<Message>The request processing has failed because of an unknown error (injected).</Message>"
        f"</Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    )
    return _response(url, 500, "text/xml", body.encode())
