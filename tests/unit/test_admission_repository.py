"""The admission half of the TaskRepository port, held to one contract by the DynamoDB adapter (in moto, with the
table as template.yaml declares it) and by the in-memory fake the service tests run on: the lines, the quota record's
versioned writes, and admission as one all-or-nothing write with the day's spend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from support.aws import REGION
from support.fakes import T0, InMemoryTaskRepository
from support.moto_stack import moto_stack  # noqa: F401 - the `stack` fixture, for the DynamoDB repository's tests

from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository
from avatar_pipeline.domain.models import ProviderQuota, Task, TaskStatus
from avatar_pipeline.domain.state_machine import begin, transition
from avatar_pipeline.ports import Charge, ConflictError, SpendLimitReachedError

S = TaskStatus
DAY = "2025-06-01"


@pytest.fixture(params=["memory", "dynamodb"])
def repo(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryTaskRepository()
    else:
        stack = request.getfixturevalue("stack")
        table = boto3.resource("dynamodb", region_name=REGION).Table(stack.table)
        yield DynamoTaskRepository(table, task_ttl=timedelta(days=90))


def queued(task_id: str, *, at_second: int, provider: str = "wavespeed") -> Task:
    waiting = begin(
        task_id, f"job-{task_id}", since=T0, arrived="a file", now=T0, provider=provider, model="kling-v1-std"
    )
    at = T0 + timedelta(seconds=at_second)
    return transition(waiting, S.QUEUED, why="paired", now=at, queued_at=at, estimated_cost_usd="0.25")


def claim(task: Task) -> Task:
    return transition(task, S.SUBMITTING, why="admitted", now=T0 + timedelta(minutes=1), charged_on=DAY)


def admitted(quota: ProviderQuota | None, task: Task) -> ProviderQuota:
    base = quota or ProviderQuota(provider=task.provider)
    return base.model_copy(update={"holders": {**base.holders, task.task_id: T0}, "version": base.version + 1})


def test_a_line_lists_its_providers_queued_tasks_in_the_order_they_joined(repo: Any) -> None:
    # Given tasks that joined WaveSpeed's line in another order than their ids, one in CometAPI's, and one sent
    for task in (
        queued("b", at_second=1),
        queued("a", at_second=3),
        queued("c", at_second=2),
        queued("z", at_second=0, provider="cometapi"),
    ):
        assert repo.create(task)
    sent = queued("d", at_second=0)
    repo.create(sent)
    repo.replace(claim(sent), expected=sent)
    # Then each line lists its own, first first, as far as asked
    assert repo.queue_head("wavespeed", 10) == ["b", "c", "a"]
    assert repo.queue_head("wavespeed", 2) == ["b", "c"]
    assert repo.queue_head("cometapi", 10) == ["z"]
    assert (repo.queue_length("wavespeed"), repo.queue_length("cometapi")) == (3, 1)


def test_the_quota_record_is_written_only_over_the_version_it_came_from(repo: Any) -> None:
    assert repo.get_quota("wavespeed") is None
    first = ProviderQuota(provider="wavespeed", holders={"a": T0})
    repo.save_quota(first, expected=None)
    with pytest.raises(ConflictError):
        repo.save_quota(first, expected=None)  # someone created it meanwhile
    second = first.model_copy(update={"holders": {}, "paused_until": T0, "version": 1})
    repo.save_quota(second, expected=first)
    with pytest.raises(ConflictError):
        repo.save_quota(second.model_copy(update={"version": 2}), expected=first)  # it changed since
    stored = repo.get_quota("wavespeed")
    assert stored is not None and (stored.version, stored.holders, stored.paused_until) == (1, {}, T0)


class ConflictingClient:
    """A DynamoDB client whose writes meet a transaction writing the same item (moto runs one write at a time)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **_: Any) -> None:
        raise ClientError({"Error": {"Code": "TransactionConflictException", "Message": "in a transaction"}}, "PutItem")

    def transact_write_items(self, **_: Any) -> None:
        reasons = [{"Code": "None"}, {"Code": "TransactionConflict"}]
        error = {"Code": "TransactionCanceledException", "Message": "conflict"}
        raise ClientError({"Error": error, "CancellationReasons": reasons}, "TransactWriteItems")


def test_a_write_that_meets_a_transaction_is_a_lost_race_to_decide_again(stack: Any) -> None:
    # Given the table's writes meet another writer's transaction
    table = boto3.resource("dynamodb", region_name=REGION).Table(stack.table)
    client = ConflictingClient(table.meta.client)
    table.meta.client = client  # type: ignore[misc]
    repo = DynamoTaskRepository(table, task_ttl=timedelta(days=90))
    task = queued("a", at_second=1)
    # Then a quota write, a task write and an admission each report a conflict (read again, decide again)
    with pytest.raises(ConflictError):
        repo.save_quota(ProviderQuota(provider="wavespeed"), expected=None)
    with pytest.raises(ConflictError):
        repo.replace(claim(task), expected=task)
    with pytest.raises(ConflictError):
        repo.admit(claim(task), expected=task, quota=admitted(None, task), expected_quota=None, charge=None)


def test_admission_writes_the_task_the_quota_and_the_spend_together(repo: Any) -> None:
    task = queued("a", at_second=0)
    repo.create(task)
    quota = admitted(None, task)
    repo.admit(
        claim(task),
        expected=task,
        quota=quota,
        expected_quota=None,
        charge=Charge(DAY, Decimal("0.25"), Decimal("0.50")),
    )
    stored = repo.get("a")
    assert stored is not None and (stored.status, stored.charged_on) == (S.SUBMITTING, DAY)
    assert repo.get_quota("wavespeed") == quota
    assert repo.spent_on(DAY) == Decimal("0.25")
    assert repo.queue_head("wavespeed", 10) == []
    assert repo.spent_on("2025-06-02") == Decimal(0)


def test_an_admission_that_lost_a_race_or_does_not_fit_the_spend_limit_writes_nothing(repo: Any) -> None:
    # Given one task admitted up to the day's limit and another in line
    first, second = queued("a", at_second=0), queued("b", at_second=1)
    repo.create(first)
    repo.create(second)
    quota = admitted(None, first)
    repo.admit(
        claim(first),
        expected=first,
        quota=quota,
        expected_quota=None,
        charge=Charge(DAY, Decimal("0.50"), Decimal("0.50")),
    )
    # When the second is admitted over a stale task, or a stale quota
    stale = second.model_copy(update={"version": second.version - 1})
    with pytest.raises(ConflictError):
        repo.admit(claim(second), expected=stale, quota=admitted(quota, second), expected_quota=quota, charge=None)
    with pytest.raises(ConflictError):
        repo.admit(claim(second), expected=second, quota=admitted(None, second), expected_quota=None, charge=None)
    # and a changed record is reported as such, even when the spend would not fit either
    too_much = Charge(DAY, Decimal("0.25"), Decimal("0.50"))
    with pytest.raises(ConflictError):
        repo.admit(claim(second), expected=second, quota=admitted(None, second), expected_quota=None, charge=too_much)
    # When it is admitted on fresh records, but its cost does not fit the limit
    with pytest.raises(SpendLimitReachedError):
        repo.admit(claim(second), expected=second, quota=admitted(quota, second), expected_quota=quota, charge=too_much)
    # Then nothing of any of these was written
    stored = repo.get("b")
    assert stored is not None and stored.status is S.QUEUED
    assert repo.get_quota("wavespeed") == quota
    assert repo.spent_on(DAY) == Decimal("0.50")
    assert repo.queue_head("wavespeed", 10) == ["b"]
    # and without a charge (counted at an earlier admission), it goes in
    repo.admit(claim(second), expected=second, quota=admitted(quota, second), expected_quota=quota, charge=None)
    assert repo.get_quota("wavespeed").holders.keys() == {"a", "b"}  # type: ignore[union-attr]


def test_the_days_first_charge_is_not_weighed_against_the_limit_so_the_dispatcher_must_never_ask_for_more(
    repo: Any,
) -> None:
    # The adapter's condition reads what was spent already: with nothing spent yet, any charge goes in. (The
    # dispatcher fails a task that costs more than the limit instead of asking; the fake keeps to the adapter.)
    task = queued("a", at_second=0)
    repo.create(task)
    repo.admit(
        claim(task),
        expected=task,
        quota=admitted(None, task),
        expected_quota=None,
        charge=Charge(DAY, Decimal("0.75"), Decimal("0.50")),
    )
    assert repo.spent_on(DAY) == Decimal("0.75")
