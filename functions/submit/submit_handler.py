"""S3 ObjectCreated under inbox/ → pair the upload, validate, record and submit."""

from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import S3Event, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from avatar_pipeline.domain.models import S3Object
from avatar_pipeline.observability import forgets_work, trace_calls
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.wiring import pipeline

trace_calls()
logger = Logger()
metrics = Metrics()


@forgets_work
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@event_source(data_class=S3Event)
def lambda_handler(event: S3Event, context: LambdaContext) -> dict[str, list[dict[str, str | None]]]:
    results = []
    for record in event.records:
        obj = record.s3.get_object
        # S3 sends keys URL-encoded ('+' for a space); the per-record accessor hands them over as sent.
        key = unquote_plus(obj.key)
        upload = S3Object(
            bucket=record.s3.bucket.name,
            key=key,
            etag=obj.etag or "",
            size=obj.size or 0,
            sequencer=obj.get("sequencer") or "",
        )
        logger.append_keys(key=upload.key)
        outcome = handle_upload(pipeline(), upload)
        metrics.add_metric(name=f"Upload_{outcome.action}", unit=MetricUnit.Count, value=1)
        logger.info("upload handled", extra={"action": outcome.action, "job": outcome.job, "task_id": outcome.task_id})
        results.append({"key": upload.key, "action": outcome.action, "task_id": outcome.task_id})
    return {"results": results}
