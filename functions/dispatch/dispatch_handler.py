"""Task table stream (a task joined a line, or left its provider) and delayed wake-ups → send the first in line."""

import json
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent, SQSEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from avatar_pipeline.config import SenderSettings
from avatar_pipeline.domain.models import HOLDING_STATUSES, ProviderName, TaskStatus
from avatar_pipeline.observability import forgets_work, trace_calls
from avatar_pipeline.services.admission import on_line_changes
from avatar_pipeline.wiring import pipeline

trace_calls()
logger = Logger()
metrics = Metrics()


def _stream_changes(event: dict[str, Any]) -> tuple[dict[ProviderName, set[str]], dict[ProviderName, set[str]]]:
    released: dict[ProviderName, set[str]] = {}
    lines: dict[ProviderName, set[str]] = {}
    for record in DynamoDBStreamEvent(event).records:
        if record.dynamodb is None:
            continue
        new, old = record.dynamodb.new_image or {}, record.dynamodb.old_image or {}
        if old.get("status") in HOLDING_STATUSES and new.get("status") not in HOLDING_STATUSES:
            released.setdefault(old["provider"], set()).add(old["task_id"])
        if new.get("status") == TaskStatus.QUEUED:
            lines.setdefault(new["provider"], set()).add(new["task_id"])
    return released, lines


@forgets_work
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("Records") and event["Records"][0].get("eventSource") == "aws:sqs":
        released: dict[ProviderName, set[str]] = {}
        lines: dict[ProviderName, set[str]] = {
            json.loads(record.body)["provider"]: set() for record in SQSEvent(event).records
        }
    else:
        released, lines = _stream_changes(event)
    report = on_line_changes(
        pipeline(SenderSettings),
        released,
        lines,
        time_left=lambda: timedelta(milliseconds=context.get_remaining_time_in_millis()),
    )
    for action, count in report.actions.items():
        metrics.add_metric(name=f"Dispatch_{action}", unit=MetricUnit.Count, value=count)
    logger.info("lines moved", extra={"actions": dict(report.actions), "waiting": report.waiting})
    return {"actions": dict(report.actions), "waiting": report.waiting}
