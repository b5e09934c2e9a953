"""EventBridge schedule → one pass over due in-flight tasks (the webhook's fallback and the pipeline's sweeper)."""

from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from avatar_pipeline.config import SenderSettings
from avatar_pipeline.observability import forgets_work, trace_calls
from avatar_pipeline.services.tracking import poll
from avatar_pipeline.wiring import pipeline

trace_calls()
logger = Logger()
metrics = Metrics()


@forgets_work
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = poll(
        pipeline(SenderSettings), time_left=lambda: timedelta(milliseconds=context.get_remaining_time_in_millis())
    )
    for action, count in report.actions.items():
        metrics.add_metric(name=f"Poll_{action}", unit=MetricUnit.Count, value=count)
    oldest_due = report.oldest_due.total_seconds()
    metrics.add_metric(name="OldestDueSeconds", unit=MetricUnit.Seconds, value=oldest_due)
    logger.info(
        "poll done",
        extra={"actions": dict(report.actions), "stopped_early": report.stopped_early, "oldest_due_s": oldest_due},
    )
    return {"actions": dict(report.actions), "stopped_early": report.stopped_early}
