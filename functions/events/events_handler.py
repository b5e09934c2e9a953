"""Task table stream → each task's moves as "Avatar Task State Change" events on the bus, in the stream's order.

A record whose events cannot be put stops the batch there: it is reported as the batch's first failure, so Lambda
retries from it (the records before it are not sent again) and no later move of the task goes out before it; when it
is the batch's first record, the invocation fails instead, so the function's errors alarm sees it. A
record that keeps failing goes, with the rest of its batch, to the failure queue (the mapping's on-failure
destination). Redelivered events keep their `event_id`.
"""

import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import DynamoDBStreamEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field

from avatar_pipeline.adapters.dynamodb import task_from_image
from avatar_pipeline.adapters.eventbridge import EventBridgePublisher, EventPublishError
from avatar_pipeline.observability import forgets_work, trace_calls, working_on
from avatar_pipeline.services.announcing_events import publish_moves

trace_calls()
logger = Logger()
metrics = Metrics()


class EventsSettings(BaseModel):
    event_bus_name: str = Field(alias="EVENT_BUS_NAME", min_length=1)


_publisher: EventBridgePublisher | None = None


def _the_publisher() -> EventBridgePublisher:
    """One per container, made on first use (its settings checked then, naming a missing variable)."""
    global _publisher
    if _publisher is None:
        settings = EventsSettings.model_validate(os.environ)
        _publisher = EventBridgePublisher(boto3.client("events"), settings.event_bus_name)
    return _publisher


@forgets_work
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    publisher = _the_publisher()
    published = 0
    for position, record in enumerate(DynamoDBStreamEvent(event).records):
        if record.dynamodb is None:
            continue
        before, after = task_from_image(record.dynamodb.old_image), task_from_image(record.dynamodb.new_image)
        working_on(after.job if after else None, after.task_id if after else None)
        try:
            published += publish_moves(publisher, before, after)
        except EventPublishError as error:
            metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=published)
            if position == 0:
                raise  # nothing of the batch done: the invocation fails (the errors alarm sees it), retried whole
            logger.error("events not put; the batch is retried from this record", extra={"error": str(error)})
            return {"batchItemFailures": [{"itemIdentifier": record.dynamodb.sequence_number}]}
    metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=published)
    return {"batchItemFailures": []}
