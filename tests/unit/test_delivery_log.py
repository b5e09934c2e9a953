"""IdempotentDeliveryLog (Powertools Idempotency) against moto's DynamoDB, in the table template.yaml declares."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from moto import mock_aws
from support.aws import REGION, table_definition
from support.events import FakeLambdaContext

from avatar_pipeline.adapters.deliveries import KEY_PREFIX, IdempotentDeliveryLog, idempotency_config
from avatar_pipeline.domain.errors import DeliveryInProgressError

TABLE = "avatar-idempotency-unit"
REMEMBER_FOR = timedelta(days=7)


class InvocationKilled(BaseException):
    """What a Lambda timeout looks like from inside: the invocation stops, nothing after it runs."""


@pytest.fixture
def table() -> Iterator[str]:
    with mock_aws():
        boto3.client("dynamodb", region_name=REGION).create_table(
            TableName=TABLE, **table_definition("IdempotencyTable")
        )
        yield TABLE


def delivery_log(table: str, remaining_ms: int = 60_000) -> IdempotentDeliveryLog:
    """The log as one invocation with `remaining_ms` left uses it."""
    config = idempotency_config(remember_for=REMEMBER_FOR)
    config.register_lambda_context(FakeLambdaContext(remaining_ms=remaining_ms))
    return IdempotentDeliveryLog(DynamoDBPersistenceLayer(table_name=table), config)


def test_a_delivery_is_processed_once_and_its_repeat_gets_the_first_outcome(table: str) -> None:
    log = delivery_log(table)
    calls: list[str] = []

    def process(outcome: str) -> Callable[[], str]:
        def run() -> str:
            calls.append(outcome)
            return outcome

        return run

    # When a delivery comes, and then again
    first = log.once("wavespeed:msg-1", process("recorded"))
    again = log.once("wavespeed:msg-1", process("unchanged"))
    # Then only the first was processed; the repeat gets its outcome, marked as replayed
    assert (first, again) == (("recorded", False), ("recorded", True))
    assert calls == ["recorded"]
    # And another delivery is processed on its own
    assert log.once("wavespeed:msg-2", lambda: "unchanged") == ("unchanged", False)


def test_the_record_is_keyed_by_a_fixed_prefix_and_expires(table: str) -> None:
    delivery_log(table).once("wavespeed:msg-1", lambda: "recorded")
    (item,) = boto3.resource("dynamodb", region_name=REGION).Table(table).scan()["Items"]
    assert str(item["id"]).startswith(f"{KEY_PREFIX}#")
    assert item["status"] == "COMPLETED"
    assert abs(int(item["expiration"]) - (time.time() + REMEMBER_FOR.total_seconds())) < 60


def test_a_delivery_whose_processing_raised_is_not_remembered(table: str) -> None:
    log = delivery_log(table)

    def fail() -> str:
        raise RuntimeError("the task table is unavailable")

    # Given processing a delivery failed
    with pytest.raises(RuntimeError, match="unavailable"):
        log.once("wavespeed:msg-1", fail)
    # When it is retried
    # Then it is processed afresh
    assert log.once("wavespeed:msg-1", lambda: "recorded") == ("recorded", False)


def test_a_repeat_while_the_first_is_processed_is_refused_as_in_progress(table: str) -> None:
    log = delivery_log(table)
    refused: list[DeliveryInProgressError] = []

    def process_while_the_twin_arrives() -> str:
        with pytest.raises(DeliveryInProgressError) as twin:
            log.once("wavespeed:msg-1", lambda: "recorded")
        refused.append(twin.value)
        return "recorded"

    assert log.once("wavespeed:msg-1", process_while_the_twin_arrives) == ("recorded", False)
    assert len(refused) == 1


@pytest.mark.parametrize(("remaining_ms", "claim_lapsed"), [(1, True), (60_000, False)])
def test_the_claim_of_a_killed_invocation_lasts_as_long_as_that_invocation_could(
    table: str, remaining_ms: int, claim_lapsed: bool
) -> None:
    # Given an invocation with `remaining_ms` left was killed while processing a delivery
    def killed() -> str:
        raise InvocationKilled

    with pytest.raises(InvocationKilled):
        delivery_log(table, remaining_ms).once("wavespeed:msg-1", killed)
    time.sleep(0.01)
    # When the provider retries the delivery
    retry = delivery_log(table)
    # Then it is processed once that invocation's time is up, and refused as in progress before
    if claim_lapsed:
        assert retry.once("wavespeed:msg-1", lambda: "recorded") == ("recorded", False)
    else:
        with pytest.raises(DeliveryInProgressError):
            retry.once("wavespeed:msg-1", lambda: "recorded")
