"""POST /webhooks/{provider}?task_id=... → authenticate the provider's callback, record it, answer fast.

The API has this one route, so the handler reads the proxy event itself: Powertools' event handler (a router for
many routes) was a tenth of this function's cold start.
"""

import base64
import json
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from avatar_pipeline.config import WebhookSettings
from avatar_pipeline.domain.errors import (
    CallbackMismatchError,
    DeliveryInProgressError,
    WebhookAuthError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.pairing import is_task_id
from avatar_pipeline.observability import forgets_work, trace_calls, working_on
from avatar_pipeline.services.context import UnknownTaskError
from avatar_pipeline.services.tracking import UnknownProviderError, receive_callback
from avatar_pipeline.wiring import DELIVERY_IDEMPOTENCY, pipeline

trace_calls()
logger = Logger()
metrics = Metrics()

# Provider callbacks are a few kB; anything far larger is not one.
MAX_BODY_BYTES = 256 * 1024


def _answer(status: HTTPStatus, message: str) -> dict[str, Any]:
    metrics.add_metric(name=f"CallbackAnswered{status.value}", unit=MetricUnit.Count, value=1)
    return {
        "statusCode": status.value,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": message}),
    }


def provider_callback(event: APIGatewayProxyEvent) -> dict[str, Any]:
    provider = (event.path_parameters or {}).get("provider")
    if event.http_method != "POST" or not provider:
        return _answer(HTTPStatus.NOT_FOUND, "no such route")
    task_id = event.get_query_string_value("task_id")
    # The signature covers the raw bytes exactly as sent.
    raw = event.body or ""
    body = base64.b64decode(raw) if event.is_base64_encoded else raw.encode()
    if len(body) > MAX_BODY_BYTES:
        return _answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "callback body too large")
    if not task_id:
        return _answer(HTTPStatus.BAD_REQUEST, "task_id query parameter missing")
    if not is_task_id(task_id):
        # Refused before any read: a forged id costs no table read, and one over DynamoDB's key size no 5xx.
        return _answer(HTTPStatus.BAD_REQUEST, "task_id is not a task id")
    working_on(None, task_id)
    logger.append_keys(provider=provider)
    try:
        query = dict(event.query_string_parameters or {})
        action = receive_callback(pipeline(WebhookSettings), provider, task_id, dict(event.headers), body, query)
    except WebhookAuthError as error:
        logger.warning("callback failed authentication", extra={"error": str(error)})
        metrics.add_metric(name="WebhookAuthFailure", unit=MetricUnit.Count, value=1)
        return _answer(HTTPStatus.UNAUTHORIZED, "callback not authenticated")
    except WebhookPayloadError as error:
        return _answer(HTTPStatus.BAD_REQUEST, f"callback not understood: {error}")
    except (UnknownProviderError, UnknownTaskError) as error:
        return _answer(HTTPStatus.NOT_FOUND, str(error))
    except CallbackMismatchError as error:
        logger.warning("callback for another task", extra={"error": str(error)})
        return _answer(HTTPStatus.CONFLICT, str(error))
    except DeliveryInProgressError as error:
        # A status webhook senders retry, unlike 409 (final to some), and no 5xx (which would be our failure).
        return _answer(HTTPStatus.TOO_MANY_REQUESTS, f"{error}; retry later")
    metrics.add_metric(name=f"Callback_{action}", unit=MetricUnit.Count, value=1)
    return _answer(HTTPStatus.ACCEPTED if action == "deferred" else HTTPStatus.OK, action)


@forgets_work
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    DELIVERY_IDEMPOTENCY.register_lambda_context(context)
    return provider_callback(APIGatewayProxyEvent(event))
