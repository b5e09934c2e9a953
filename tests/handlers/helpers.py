"""Shared moves for the handler tests: put media in the moto bucket and deliver its S3 event; hand the task table's
stream (and the wake-up queue) to the dispatcher as their event source mappings would."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

import boto3
import httpx
import respx
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodbstreams.models import dynamodbstreams_backends
from support.aws import COMETAPI_BASE_URL, REGION, ROOT, WAVESPEED_BASE_URL, Stack
from support.events import FakeLambdaContext, lambda_stream_record, s3_created, sqs_event

from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.twin.event_filter import filter_records
from avatar_local.twin.template import DynamoDBEventSource, FunctionSpec, function_by_id, load_template

# Real media, as validation reads content: a generated portrait and a 3-second speech-like clip.
PNG_BYTES = make_sample_portrait()
MP3_BYTES = make_sample_speech(3.0)
# Different bytes of the same kinds, for "changed content" cases.
OTHER_PNG_BYTES = make_sample_portrait(width=500, height=660)
OTHER_MP3_BYTES = make_sample_speech(3.5)


def upload(stack: Stack, key: str, body: bytes) -> dict[str, Any]:
    """Store an object as a user would, and return the S3 event AWS would send for it."""
    s3 = boto3.client("s3", region_name=REGION)
    etag = s3.put_object(Bucket=stack.bucket, Key=key, Body=body)["ETag"].strip('"')
    return s3_created(stack.bucket, key, etag, len(body))


def deliver_upload(stack: Stack, key: str, body: bytes) -> dict[str, Any]:
    from submit_handler import lambda_handler

    return lambda_handler(upload(stack, key, body), FakeLambdaContext())


def prediction(prediction_id: str, status: str, outputs: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": prediction_id,
        "model": "kwaivgi/kling-v1-ai-avatar-standard",
        "outputs": outputs or [],
        "urls": {"get": f"{WAVESPEED_BASE_URL}/api/v3/predictions/{prediction_id}/result"},
        "has_nsfw_contents": [],
        "status": status,
        "created_at": "2026-11-21T10:00:00.000000000Z",
        "error": "",
        "timings": {"inference": 0},
        **extra,
    }


def envelope(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"code": 200, "message": "success", "data": data})


def mock_wavespeed_submit(router: respx.MockRouter, prediction_id: str = "a" * 32) -> respx.Route:
    return router.post(url__regex=rf"{WAVESPEED_BASE_URL}/api/v3/kwaivgi/kling-v1-ai-avatar-(standard|pro)").mock(
        return_value=envelope(prediction(prediction_id, "created"))
    )


def comet_task(task_id: str, status: str, **extra: Any) -> dict[str, Any]:
    """A CometAPI (Kling) task object, as in its answers' ``data`` and as the body of its callbacks."""
    return {"task_id": task_id, "task_status": status, "created_at": 1748779200000, **extra}


def comet_answer(data: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"code": 0, "message": "SUCCEED", "request_id": "req-1", "data": data})


def mock_cometapi_submit(router: respx.MockRouter, task_id: str) -> respx.Route:
    return router.post(f"{COMETAPI_BASE_URL}/kling/v1/videos/avatar/image2video").mock(
        return_value=comet_answer(comet_task(task_id, "submitted"))
    )


def mock_cometapi_query(router: respx.MockRouter, data: dict[str, Any]) -> respx.Route:
    """CometAPI's answer to our query about the task `data` describes."""
    return router.get(f"{COMETAPI_BASE_URL}/kling/v1/videos/avatar/image2video/{data['task_id']}").mock(
        return_value=comet_answer(data)
    )


def content_hash(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()  # noqa: S324 - S3's ETag for a single PUT is the MD5


def submitted_json(route: respx.Route, call: int = 0) -> dict[str, Any]:
    return json.loads(route.calls[call].request.content)


# --- the dispatcher -------------------------------------------------------------------------------------------


@cache
def dispatch_function() -> FunctionSpec:
    return function_by_id(load_template(ROOT / "template.yaml"), "DispatchFunction")


def dispatch_stream_source() -> DynamoDBEventSource:
    (event,) = dispatch_function().events_of_type("DynamoDB")
    return event.dynamodb()


def dispatch_context() -> FakeLambdaContext:
    """A fresh invocation of the dispatcher: its whole timeout ahead of it, as in AWS."""
    return FakeLambdaContext(function_name="dispatch", remaining_ms=dispatch_function().timeout * 1000)


def dispatch(event: dict[str, Any]) -> dict[str, Any]:
    from dispatch_handler import lambda_handler

    return lambda_handler(event, dispatch_context())


class TaskStream:
    """The task table's stream as the dispatcher's mapping reads it: every change since the last read, in order,
    kept only if one of the template's filter patterns lets it through (what AWS filters out never reaches the
    function), in batches of the mapping's size.

    moto's stream is read through its backend: in decorator mode DynamoDB's own route shadows the Streams API."""

    def __init__(self, stack: Stack) -> None:
        description = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=stack.table)
        self.arn: str = description["Table"]["LatestStreamArn"]
        self._streams = dynamodbstreams_backends[DEFAULT_ACCOUNT_ID][REGION]
        (shard,) = self._streams.describe_stream(self.arn)["Shards"]
        self._iterator = self._streams.get_shard_iterator(self.arn, shard["ShardId"], "TRIM_HORIZON", None).arn
        self.source = dispatch_stream_source()

    def read(self) -> list[dict[str, Any]]:
        """Every record written since the last read, as Lambda would shape it (unfiltered)."""
        page = self._streams.get_records(self._iterator, 1000)
        self._iterator = page["NextShardIterator"]
        return [lambda_stream_record(record, self.arn) for record in page["Records"]]

    def for_dispatch(self) -> list[dict[str, Any]]:
        """The records since the last read that the dispatcher's filters let through."""
        return filter_records(self.source.filter_patterns, self.read())

    def deliver(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """These records to the dispatcher, a batch per invocation; the invocations' answers."""
        size = self.source.batch_size
        return [dispatch({"Records": records[at : at + size]}) for at in range(0, len(records), size)]

    def settle(self, max_rounds: int = 10) -> list[dict[str, Any]]:
        """Deliver what the dispatcher is sent until its own writes send it nothing more; its answers."""
        answers: list[dict[str, Any]] = []
        for _ in range(max_rounds):
            records = self.for_dispatch()
            if not records:
                return answers
            answers += self.deliver(records)
        raise AssertionError(f"the lines kept moving after {max_rounds} rounds")


def wake_dispatcher(stack: Stack, wait_seconds: int = 0) -> dict[str, Any] | None:
    """The due wake-ups, received from their queue and handed to the dispatcher as its SQS event source would;
    None when none is due."""
    messages = stack.wakeups(wait_seconds)
    if not messages:
        return None
    answer = dispatch(sqs_event(messages, stack.wakeup_queue_arn(), REGION))
    sqs = boto3.client("sqs", region_name=REGION)
    for message in messages:  # a successful invocation deletes its batch
        sqs.delete_message(QueueUrl=stack.wakeup_queue_url, ReceiptHandle=message["ReceiptHandle"])
    return answer


def all_actions(answers: list[dict[str, Any]]) -> dict[str, int]:
    """The dispatcher's actions over several invocations, added up."""
    total: dict[str, int] = {}
    for answer in answers:
        for action, count in answer["actions"].items():
            total[action] = total.get(action, 0) + count
    return total
