"""Polls of a task table holding a history of finished tasks and some in flight, in a process of its own.

    python -m avatar_local.bench.poll_child <finished> <in flight> <polls>

The table is template.yaml's TaskTable in moto (in-process). Finished tasks are COMPLETED and announced, written by
the real repository (so they carry exactly the attributes it writes); the tasks in flight are PROCESSING at
WaveSpeed and due. Each poll is `services.tracking.poll` with the real `DynamoTaskRepository` and a provider that
answers "still processing"; before each one the tasks in flight are made due again. DynamoDB items read are counted
from the responses: `ScannedCount` of each Query page (what DynamoDB reads, before any filter), one per GetItem,
the items of BatchGetItem/TransactGetItems.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from avatar_local.bench.common import ACCOUNT_ID, REGION, ROOT, answer

TABLE = "avatar-bench-tasks"


class StillProcessing:
    """The provider, answering every status query with "processing" (the common case for a task in flight)."""

    name = "wavespeed"
    callback_auth = "signature"

    def fetch(self, provider_task_id: str) -> Any:
        from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus

        return ProviderJob(provider_task_id=provider_task_id, status=ProviderJobStatus.PROCESSING)


def _task(number: int, now: datetime, *, finished: bool) -> Any:
    from avatar_pipeline.domain.models import S3Object, TaskStatus
    from avatar_pipeline.domain.state_machine import begin, transition

    job = f"bench-{'done' if finished else 'live'}-{number:06d}"
    task_id = f"{number:032x}" if finished else f"f{number:031x}"
    started = now - timedelta(minutes=30 if finished else 5)
    task = begin(
        task_id,
        job,
        since=started,
        arrived=f"inbox/{job}/face.png",
        now=started,
        provider="wavespeed",
        model="kling-v1-std",
        image=S3Object(bucket="media", key=f"inbox/{job}/face.png", etag="a" * 32, size=48_213, sequencer="0A1B"),
        audio=S3Object(bucket="media", key=f"inbox/{job}/voice.mp3", etag="b" * 32, size=80_113, sequencer="0A1C"),
    )
    task = transition(
        task,
        TaskStatus.QUEUED,
        why="inbox/… and inbox/… paired; 1st in line",
        now=started,
        queued_at=started,
        audio_ms=10_000,
        estimated_cost_usd="0.50",
    )
    task = transition(task, TaskStatus.SUBMITTING, why="WaveSpeed has room: sending it", now=started)
    task = transition(
        task, TaskStatus.SUBMITTED, why="WaveSpeed accepted it", now=started, provider_task_id=f"p{number:031x}"
    )
    task = transition(task, TaskStatus.PROCESSING, why="WaveSpeed is making the video", now=started)
    if not finished:
        return task.model_copy(update={"next_check_at": now - timedelta(seconds=1), "last_news_at": started})
    url = f"https://d1.cloudfront.net/output/{number}.mp4"
    task = transition(
        task, TaskStatus.OUTPUT_READY, why="WaveSpeed finished the video", now=now, provider_output_url=url
    )
    task = transition(task, TaskStatus.FINALIZING, why="copy attempt 1", now=now, finalize_attempts=1)
    output = S3Object(bucket="media", key=f"outputs/{job}/{task_id}.mp4", etag="c" * 32, size=9_876_543)
    task = transition(task, TaskStatus.COMPLETED, why="stored", now=now, output=output, next_check_at=None)
    return task.model_copy(update={"notified_at": now})


def _fill(table: Any, item: dict[str, Any], count: int) -> None:
    """`count` copies of a finished task's item, each its own task: the first written through the API, the others
    cloned inside moto (writing 100,000 items through the API would take minutes; what a poll reads does not change).
    """
    from boto3.dynamodb.types import TypeSerializer
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.dynamo_type import DynamoType, Item

    table.put_item(Item=item)
    stored = dynamodb_backends[ACCOUNT_ID][REGION].get_table(table.name)
    first: Any = stored.get_item(DynamoType(TypeSerializer().serialize(item["pk"])), None)
    for number in range(1, count):
        task_id = f"{number:032x}"
        clone: Any = Item.__new__(Item)
        clone.hash_key = DynamoType({"S": f"TASK#{task_id}"})
        clone.range_key = None
        clone.attrs = type(first.attrs)()
        dict.update(clone.attrs, first.attrs)  # the nested values are shared: nothing changes them
        for name, value in (("pk", clone.hash_key), ("task_id", DynamoType({"S": task_id}))):
            dict.__setitem__(clone.attrs, name, value)
        dict.__setitem__(clone.attrs, "job", DynamoType({"S": f"bench-done-{number:06d}"}))
        stored.items[clone.hash_key] = clone


def main(finished: int, in_flight: int, polls: int) -> dict[str, Any]:
    import boto3
    from aws_lambda_powertools import Logger
    from moto import mock_aws

    from avatar_local.twin.template import load_template
    from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository
    from avatar_pipeline.config import Settings
    from avatar_pipeline.services.context import PipelineContext
    from avatar_pipeline.services.tracking import poll

    Logger()  # the poller handler's logger: the services' child loggers log through it, as in the function
    template = load_template(ROOT / "template.yaml")
    props = template["Resources"]["TaskTable"]["Properties"]
    definition = {key: props[key] for key in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")}
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name=REGION)
        table = dynamodb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST", **definition)
        repository = DynamoTaskRepository(table, task_ttl=timedelta(days=90))
        now = datetime.now(UTC)
        fill_started = time.monotonic()
        if finished:
            _fill(table, repository._task_item(_task(0, now, finished=True)), finished)
        fill_seconds = time.monotonic() - fill_started
        live = [_task(number, now, finished=False) for number in range(in_flight)]

        reads: Counter[str] = Counter()
        writes: Counter[str] = Counter()

        def count(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
            operation = model.name
            if operation == "Query" or operation == "Scan":
                reads[operation] += int(parsed.get("ScannedCount", 0))
            elif operation == "GetItem":
                reads[operation] += 1
            elif operation == "BatchGetItem":
                reads[operation] += sum(len(items) for items in parsed.get("Responses", {}).values())
            elif operation == "TransactGetItems":
                reads[operation] += len(parsed.get("Responses", []))
            elif operation in ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"):
                writes[operation] += 1

        settings = Settings.from_env(
            {
                "TASK_TABLE_NAME": TABLE,
                "MEDIA_BUCKET": "media",
                "TOPIC_ARN": "arn:aws:sns:x:1:t",
                "WAVESPEED_SECRET_ID": "s",
            }
        )
        # A poll of tasks at the provider uses no media, notifier, meter, deliveries nor (lines empty) waker.
        nothing: Any = None
        provider: Any = StillProcessing()
        context = PipelineContext(
            settings=settings,
            tasks=repository,
            media=nothing,
            notifier=nothing,
            providers={"wavespeed": provider},
            meter=nothing,
            deliveries=nothing,
            waker=nothing,
            callback_tokens=nothing,
        )
        table.meta.client.meta.events.register("after-call.dynamodb", count)
        results = []
        for _ in range(polls):
            with table.batch_writer() as batch:
                for task in live:
                    batch.put_item(Item=repository._task_item(task))
            reads.clear()
            writes.clear()
            started = time.perf_counter()
            report = poll(context, time_left=lambda: timedelta(minutes=5))
            seconds = time.perf_counter() - started
            results.append(
                {
                    "items_read": sum(reads.values()),
                    "reads": dict(reads),
                    "writes": dict(writes),
                    "seconds": seconds,
                    "actions": dict(report.actions),
                }
            )
    return {"fill_seconds": fill_seconds, "polls": results}


if __name__ == "__main__":
    answer(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
