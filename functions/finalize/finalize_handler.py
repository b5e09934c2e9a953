"""Task table stream → copy a ready video into outputs/, and publish each ended task's one notification.

A record that fails after others were handled is reported as the batch's failure, so Lambda retries from it; when the
first fails (with BatchSize 1, any), the invocation fails, as Powertools' batch utility made it, so finalize's errors
alarm sees it. After the mapping's retries the record goes to the failure queue. Written out rather than with
Powertools' batch utility, whose import (its parser models of every event source) was a third of this function's
cold start.
"""

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from avatar_pipeline.domain.models import TaskStatus
from avatar_pipeline.observability import forgets_work, trace_calls, working_on
from avatar_pipeline.services.context import UnknownTaskError
from avatar_pipeline.services.finishing import announce, finalize_output
from avatar_pipeline.wiring import pipeline

trace_calls()
logger = Logger()
metrics = Metrics()

# Kept back from the invocation's remaining time, to record the outcome of a copy after it ends.
FINALIZE_SAFETY_MARGIN = timedelta(seconds=30)


def handle_record(record: DynamoDBRecord, lambda_context: LambdaContext) -> str:
    image = record.dynamodb.new_image if record.dynamodb else {}
    task_id = image.get("task_id")
    status = image.get("status")
    working_on(image.get("job"), task_id)
    if not task_id or status is None:
        return "ignored"
    try:
        return _finish(task_id, TaskStatus(status), lambda_context)
    except UnknownTaskError:
        # Only a task removed from the table after this change was written: nothing is left to finish.
        logger.error("stream change for a task that no longer exists; skipped")
        metrics.add_metric(name="StreamRecordForMissingTask", unit=MetricUnit.Count, value=1)
        return "ignored"


def _finish(task_id: str, status: TaskStatus, lambda_context: LambdaContext) -> str:
    if status == TaskStatus.OUTPUT_READY:
        remaining = timedelta(milliseconds=lambda_context.get_remaining_time_in_millis())
        finalized = finalize_output(pipeline(), task_id, remaining - FINALIZE_SAFETY_MARGIN)
        metrics.add_metric(name=f"Finalize_{finalized}", unit=MetricUnit.Count, value=1)
        return finalized
    if status.is_terminal:
        announced = announce(pipeline(), task_id)
        metrics.add_metric(name=f"Notification_{announced}", unit=MetricUnit.Count, value=1)
        return announced
    return "ignored"


@forgets_work
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[dict[str, str]]]:
    for position, record in enumerate(DynamoDBStreamEvent(event).records):
        try:
            handle_record(record, context)
        except Exception:
            if position == 0:
                raise  # nothing of the batch done: the invocation fails (the errors alarm sees it) and is retried whole
            logger.exception("stream record not handled; the batch is retried from it")
            sequence_number = record.dynamodb.sequence_number if record.dynamodb else None
            return {"batchItemFailures": [{"itemIdentifier": sequence_number or ""}]}
    return {"batchItemFailures": []}
