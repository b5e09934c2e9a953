"""`ports.DeliveryLog` on Powertools Idempotency: a record per delivery id in a table of its own.

Powertools writes an in-progress record before `process` runs (a conditional put, so of two concurrent deliveries
only one runs), deletes it when `process` raises, and marks it completed with what `process` returned when it
returns. An in-progress record lapses when the invocation that wrote it would have timed out (hence the Lambda
context registered on the config), so a delivery whose invocation died can be retried then.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

from avatar_pipeline.domain.errors import DeliveryInProgressError
from avatar_pipeline.ports import OutcomeT

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer
    from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

# Fixed, so the records' keys survive a renamed function or module (Powertools' default prefix names both).
KEY_PREFIX = "provider-delivery"


def idempotency_config(remember_for: timedelta) -> IdempotencyConfig:
    """The settings an `IdempotentDeliveryLog` runs with; `remember_for` must outlast the providers' retries.

    Make one per container, as Powertools has it, and register each invocation's Lambda context on it
    (`register_lambda_context`): a claim on a delivery then lasts only as long as the invocation that made it may run.
    """
    return IdempotencyConfig(
        expires_after_seconds=int(remember_for.total_seconds()),
        raise_on_no_idempotency_key=True,
        response_hook=_mark_replayed,
    )


class IdempotentDeliveryLog:
    """Implements `ports.DeliveryLog`, with a config made by `idempotency_config`."""

    def __init__(self, persistence_store: BasePersistenceLayer, config: IdempotencyConfig) -> None:
        self._process_once = idempotent_function(
            _process,
            data_keyword_argument="delivery_id",
            persistence_store=persistence_store,
            config=config,
            key_prefix=KEY_PREFIX,
        )

    def once(self, delivery_id: str, process: Callable[[], OutcomeT]) -> tuple[OutcomeT, bool]:
        try:
            result = self._process_once(delivery_id=delivery_id, process=process)
        except IdempotencyAlreadyInProgressError as error:
            raise DeliveryInProgressError(f"delivery {delivery_id} is being processed") from error
        return result["outcome"], result.get("replayed", False)


def _process(*, delivery_id: str, process: Callable[[], str]) -> dict[str, str]:
    """What is stored for a delivery (the key is the hash of `delivery_id`)."""
    return {"outcome": process()}


def _mark_replayed(response: dict[str, Any], idempotent_data: DataRecord) -> dict[str, Any]:
    """Powertools calls this only for a stored result, never for a fresh one."""
    return {**response, "replayed": True}
