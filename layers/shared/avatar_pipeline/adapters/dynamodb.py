"""The task table: tasks and pair slots in one DynamoDB table.

Items:
- `TASK#<task_id>`: a Task.
- `JOB#<job>`: the job's PairSlot (latest image and audio upload).
- `QUOTA#<provider>`: the provider account's ProviderQuota (who holds its render slots, its recent submissions).
- `SPEND#<day>`: the estimated provider spend admitted on that UTC day (`spent_usd`).
Tasks and slots carry `in_flight` and `next_check_at` (epoch seconds) only while they need the poller's attention, so
the `in-flight` index is sparse: a poll reads what is due, never the table's history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from avatar_pipeline.domain.models import PairSlot, ProviderName, ProviderQuota, Task, TaskStatus
from avatar_pipeline.ports import Charge, ConflictError, SpendLimitReachedError

IN_FLIGHT_INDEX = "in-flight"
BY_JOB_INDEX = "by-job"
# Sparse, keys only: a QUEUED task carries `queued_for` (its provider) and `queue_place` (its place, then its id),
# so a provider's line is one Query in order, and its length a Query that reads keys only.
QUEUE_INDEX = "queue"
IN_FLIGHT = "1"


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _is_condition_failure(error: ClientError) -> bool:
    return bool(error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


def _is_write_conflict(error: ClientError) -> bool:
    """A versioned write lost: the item changed, or a transaction was writing it at that moment (either way, read it
    again and decide again)."""
    return _is_condition_failure(error) or error.response.get("Error", {}).get("Code") == "TransactionConflictException"


# Why a transaction was cancelled, for each of its items: these mean another writer got there first.
_LOST_RACE = ("ConditionalCheckFailed", "TransactionConflict")


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    fields = dict(item)
    if "next_check_at" in fields:
        fields["next_check_at"] = datetime.fromtimestamp(int(fields["next_check_at"]), UTC)
    return fields


def task_from_image(image: Mapping[str, Any] | None) -> Task | None:
    """A stream record's image (old or new) as the task it holds; None for no image, or another kind of item (a
    pair slot, a provider's quota, a day's spend)."""
    if not image or image.get("kind") != "task":
        return None
    return Task.model_validate(_from_item(dict(image)))


class DynamoTaskRepository:
    def __init__(self, table: Any, task_ttl: timedelta) -> None:
        self._table = table
        self._task_ttl = task_ttl

    # --- tasks -------------------------------------------------------------------------------------------------
    def _task_item(self, task: Task) -> dict[str, Any]:
        item = task.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"next_check_at"})
        item["pk"] = f"TASK#{task.task_id}"
        item["kind"] = "task"
        if task.needs_attention:
            item["in_flight"] = IN_FLIGHT
            item["next_check_at"] = _epoch(task.next_check_at or task.updated_at)
        if task.status is TaskStatus.QUEUED:
            assert task.queued_at is not None
            item["queued_for"] = task.provider
            item["queue_place"] = f"{task.queued_at.isoformat()}#{task.task_id}"
        if task.status.is_terminal:
            item["expires_at"] = _epoch(task.updated_at + self._task_ttl)
        return item

    def _task_write(self, new: Task, expected: Task) -> dict[str, Any]:
        return {
            "Item": self._task_item(new),
            "ConditionExpression": "#status = :status AND #version = :version",
            "ExpressionAttributeNames": {"#status": "status", "#version": "version"},
            "ExpressionAttributeValues": {":status": expected.status.value, ":version": expected.version},
        }

    def get(self, task_id: str) -> Task | None:
        item = self._table.get_item(Key={"pk": f"TASK#{task_id}"}, ConsistentRead=True).get("Item")
        return Task.model_validate(_from_item(item)) if item else None

    def create(self, task: Task) -> bool:
        try:
            self._table.put_item(Item=self._task_item(task), ConditionExpression="attribute_not_exists(pk)")
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True

    def replace(self, new: Task, *, expected: Task) -> None:
        try:
            self._table.put_item(**self._task_write(new, expected))
        except ClientError as error:
            if _is_write_conflict(error):
                raise ConflictError(f"task {new.task_id} changed since version {expected.version}") from error
            raise

    # --- pair slots --------------------------------------------------------------------------------------------
    def _slot_item(self, slot: PairSlot) -> dict[str, Any]:
        item = slot.model_dump(mode="json", exclude_none=True, exclude={"next_check_at"})
        item["pk"] = f"JOB#{slot.job}"
        item["kind"] = "slot"
        if slot.waiting_since is not None:
            item["in_flight"] = IN_FLIGHT
            item["next_check_at"] = _epoch(slot.next_check_at or slot.waiting_since)
        return item

    def _slot_write(self, new: PairSlot, expected: PairSlot | None) -> dict[str, Any]:
        return _versioned_put(self._slot_item(new), expected.version if expected else None)

    def get_slot(self, job: str) -> PairSlot | None:
        item = self._table.get_item(Key={"pk": f"JOB#{job}"}, ConsistentRead=True).get("Item")
        return PairSlot.model_validate(_from_item(item)) if item else None

    def save_slot(self, new: PairSlot, *, expected: PairSlot | None) -> None:
        try:
            self._table.put_item(**self._slot_write(new, expected))
        except ClientError as error:
            if _is_write_conflict(error):
                raise ConflictError(f"slot of job {new.job} changed") from error
            raise

    def save_slot_and_create(self, new: PairSlot, *, expected: PairSlot, task: Task) -> bool:
        task_write = {"Item": self._task_item(task), "ConditionExpression": "attribute_not_exists(pk)"}
        try:
            self._table.meta.client.transact_write_items(
                TransactItems=[
                    # The resource's client takes plain Python values, like the table's own calls.
                    {"Put": {"TableName": self._table.name, **self._slot_write(new, expected)}},
                    {"Put": {"TableName": self._table.name, **task_write}},
                ]
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if reasons and reasons[0] in _LOST_RACE:
                raise ConflictError(f"slot of job {new.job} changed") from error
            if len(reasons) > 1 and reasons[1] == "ConditionalCheckFailed":
                return False
            raise
        return True

    # --- queries -----------------------------------------------------------------------------------------------
    def due(self, now: datetime, limit: int) -> tuple[list[Task], list[PairSlot]]:
        tasks: list[Task] = []
        slots: list[PairSlot] = []
        query: dict[str, Any] = {
            "IndexName": IN_FLIGHT_INDEX,
            "KeyConditionExpression": "in_flight = :in_flight AND next_check_at <= :now",
            "ExpressionAttributeValues": {":in_flight": IN_FLIGHT, ":now": _epoch(now)},
        }
        while len(tasks) + len(slots) < limit:
            page = self._table.query(**query, Limit=limit - len(tasks) - len(slots))
            for item in page.get("Items", []):
                if item.get("kind") == "slot":
                    slots.append(PairSlot.model_validate(_from_item(item)))
                else:
                    tasks.append(Task.model_validate(_from_item(item)))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return tasks, slots

    def list_job(self, job: str) -> tuple[PairSlot | None, list[Task]]:
        slot: PairSlot | None = None
        tasks: list[Task] = []
        query: dict[str, Any] = {
            "IndexName": BY_JOB_INDEX,
            "KeyConditionExpression": "job = :job",
            "ExpressionAttributeValues": {":job": job},
        }
        while True:
            page = self._table.query(**query)
            for item in page.get("Items", []):
                if item.get("kind") == "slot":
                    slot = PairSlot.model_validate(_from_item(item))
                else:
                    tasks.append(Task.model_validate(_from_item(item)))
            if "LastEvaluatedKey" not in page:
                return slot, tasks
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- admission ---------------------------------------------------------------------------------------------
    def queue_head(self, provider: ProviderName, limit: int) -> list[str]:
        page = self._table.query(
            IndexName=QUEUE_INDEX,
            KeyConditionExpression="queued_for = :provider",
            ExpressionAttributeValues={":provider": provider},
            Limit=limit,
        )
        return [item["pk"].removeprefix("TASK#") for item in page.get("Items", [])]

    def queue_length(self, provider: ProviderName) -> int:
        count = 0
        query: dict[str, Any] = {
            "IndexName": QUEUE_INDEX,
            "KeyConditionExpression": "queued_for = :provider",
            "ExpressionAttributeValues": {":provider": provider},
            "Select": "COUNT",
        }
        while True:
            page = self._table.query(**query)
            count += int(page.get("Count", 0))
            if "LastEvaluatedKey" not in page:
                return count
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _quota_item(self, quota: ProviderQuota) -> dict[str, Any]:
        item = quota.model_dump(mode="json", exclude_none=True)
        item["pk"] = f"QUOTA#{quota.provider}"
        item["kind"] = "quota"
        return item

    def get_quota(self, provider: ProviderName) -> ProviderQuota | None:
        item = self._table.get_item(Key={"pk": f"QUOTA#{provider}"}, ConsistentRead=True).get("Item")
        return ProviderQuota.model_validate(item) if item else None

    def save_quota(self, new: ProviderQuota, *, expected: ProviderQuota | None) -> None:
        try:
            self._table.put_item(**_versioned_put(self._quota_item(new), expected.version if expected else None))
        except ClientError as error:
            if _is_write_conflict(error):
                raise ConflictError(f"quota of {new.provider} changed") from error
            raise

    def admit(
        self,
        claimed: Task,
        *,
        expected: Task,
        quota: ProviderQuota,
        expected_quota: ProviderQuota | None,
        charge: Charge | None,
    ) -> None:
        name = self._table.name
        writes: list[dict[str, Any]] = [
            {"Put": {"TableName": name, **self._task_write(claimed, expected)}},
            {
                "Put": {
                    "TableName": name,
                    **_versioned_put(self._quota_item(quota), expected_quota.version if expected_quota else None),
                }
            },
        ]
        if charge is not None:
            writes.append(
                {
                    "Update": {
                        "TableName": name,
                        "Key": {"pk": f"SPEND#{charge.day}"},
                        # No arithmetic in conditions: the most that may have been spent before this charge.
                        "UpdateExpression": "ADD spent_usd :amount SET kind = :kind, expires_at = :expires",
                        "ConditionExpression": "attribute_not_exists(spent_usd) OR spent_usd <= :most_before",
                        "ExpressionAttributeValues": {
                            ":amount": charge.amount,
                            ":most_before": charge.limit - charge.amount,
                            ":kind": "spend",
                            ":expires": _epoch(datetime.fromisoformat(charge.day).replace(tzinfo=UTC) + self._task_ttl),
                        },
                    }
                }
            )
        try:
            self._table.meta.client.transact_write_items(TransactItems=writes)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            reasons = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if any(reason in _LOST_RACE for reason in reasons[:2]) or "TransactionConflict" in reasons:
                raise ConflictError(f"task {claimed.task_id} or the quota of {quota.provider} changed") from error
            if len(reasons) > 2 and reasons[2] == "ConditionalCheckFailed":
                raise SpendLimitReachedError(f"the spend limit of {charge.day if charge else ''} is reached") from error
            raise

    def spent_on(self, day: str) -> Decimal:
        item = self._table.get_item(Key={"pk": f"SPEND#{day}"}, ConsistentRead=True).get("Item")
        return Decimal(str(item["spent_usd"])) if item and "spent_usd" in item else Decimal(0)


def _versioned_put(item: dict[str, Any], expected_version: int | None) -> dict[str, Any]:
    """A put that succeeds only over the version it was derived from (or where there was nothing)."""
    if expected_version is None:
        return {"Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
    return {
        "Item": item,
        "ConditionExpression": "#version = :version",
        "ExpressionAttributeNames": {"#version": "version"},
        "ExpressionAttributeValues": {":version": expected_version},
    }
