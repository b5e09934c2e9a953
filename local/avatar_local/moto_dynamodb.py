"""Give moto's DynamoDB the guarantees of the real service that the pipeline relies on, at the real service's cost.

- DynamoDB applies writes to one item one at a time: of two concurrent UpdateItem calls, the second sees the first's
  result. moto reads, changes and stores an item without a lock, so two threads can both "create" the same item and
  one write is lost. Serialising moto's write operations restores the real behaviour (and costs nothing in tests).
- A cancelled transaction leaves the table and its stream as they were. moto backs a TransactWriteItems up by deep
  copying every table it names — every item and every stream record so far, at each transaction, so a local run slows
  down as its table grows (a burst of pairs, each cut by a transaction, takes quadratic time) — and rolls a failure
  back by putting the copy in the table's place, with a copy of its stream shard, so every open shard iterator (a
  stream reader's) keeps reading the old shard and never sees another record. Instead, a transaction here checks
  every condition before it writes anything, as DynamoDB does (its items are distinct, so none can affect another's
  condition); should a write still fail, the items written so far are put back as they were and their stream
  records dropped, in the same shard.
- A read never fails because another request writes the same table at the same moment. moto's server answers requests
  on several threads, and a Query or Scan iterating a table's items (as ListStreams and DescribeTable do, to count
  them) while another thread's PutItem or DeleteItem adds or removes one fails with HTTP 500 ("dictionary changed size
  during iteration"), as does copying or serialising an item that an UpdateItem (which moto applies to the stored
  item in place) changes meanwhile. The real service never answers 500 for that. So each DynamoDB request is handled
  whole (from its parsed parameters to its serialised answer) under the lock the writes take, one at a time across
  every table, and so is each DynamoDB Streams read of a table or its shard (nor does a stream reader see the records
  of a transaction that is then cancelled); the stream records it returns, which never change once written, are
  serialised outside the lock. Under the GIL these requests never ran in parallel anyway: this costs no throughput,
  though a short request may wait for a long one to finish instead of sharing the CPU with it.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.responses import DynamoHandler
from moto.dynamodbstreams.models import DynamoDBStreamsBackend

_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_STREAM_READS = ("describe_stream", "list_streams", "get_shard_iterator", "get_records")
# What runs under `_lock`: moto's DynamoDB writes (also when called directly, not through a request), every DynamoDB
# request (moto calls `call_action` for each, in server mode and under mock_aws alike: it runs the action and
# serialises the answer), and DynamoDB Streams' reads of tables and shards.
_SERIALISED: tuple[tuple[type, tuple[str, ...]], ...] = (
    (DynamoDBBackend, _WRITES),
    (DynamoHandler, ("call_action",)),
    (DynamoDBStreamsBackend, _STREAM_READS),
)
_lock = threading.RLock()

Error = tuple[str, str, Any] | tuple[None, None, None]


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    return locked


def _key_of(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> dict[str, Any]:
    if op_type != "Put":
        return dict(op["Key"])
    table = backend.get_table(op["TableName"])
    attributes = op["Item"]
    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attributes[table.range_key_attr]
    return key


def _checked(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every operation, once each condition has been checked against the items as they are (nothing written)."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    operations: list[tuple[str, dict[str, Any]]] = []
    targets: set[tuple[str, str]] = set()
    errors: list[Error] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            errors.append(("ValueError", "Unsupported transaction operation", None))
            continue
        key = _key_of(backend, op_type, op)
        target = (str(op["TableName"]), str(dict(sorted(key.items()))))
        if target in targets:
            raise MultipleTransactionsException()
        targets.add(target)
        operations.append((op_type, op))
        condition = op.get("ConditionExpression")
        current = backend.get_item(op["TableName"], key)
        if condition is not None and not get_filter_expression(
            condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        ).expr(current):
            wants_old = op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
            old = current.to_json()["Attributes"] if wants_old and current is not None else None
            errors.append(("ConditionalCheckFailed", str(ConditionalCheckFailed().message), old))
            continue
        errors.append((None, None, None))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    return operations


def _apply(backend: DynamoDBBackend, op_type: str, op: dict[str, Any]) -> None:
    table_name, names, values = op["TableName"], op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
    condition = op.get("ConditionExpression")
    conditions: dict[str, Any] = {
        "condition_expression": condition,
        "expression_attribute_names": names,
        "expression_attribute_values": values,
    }
    if op_type == "Put":
        backend.put_item(table_name, op["Item"], **conditions)
    elif op_type == "Delete":
        backend.delete_item(table_name, op["Key"], **conditions)
    elif op_type == "Update":
        backend.update_item(table_name, op["Key"], update_expression=op["UpdateExpression"], **conditions)


def transact_write_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """TransactWriteItems at the cost of the items it names (see the module docstring)."""
    operations = _checked(backend, transact_items)
    undo: list[Callable[[], None]] = []
    errors: list[Error] = [(None, None, None)] * len(operations)
    for index, (op_type, op) in enumerate(operations):
        if op_type == "ConditionCheck":
            continue
        table = backend.get_table(op["TableName"])
        hash_key, range_key = backend.get_keys_value(table, _key_of(backend, op_type, op))
        before = table.get_item(hash_key, range_key)
        undo.append(functools.partial(_restore, table, hash_key, range_key, copy.deepcopy(before)))
        try:
            _apply(backend, op_type, op)
        except (MultipleTransactionsException, MockValidationException):
            _undo(undo)
            raise
        except Exception as error:  # as moto does: any other failure cancels the transaction, with its reason
            _undo(undo)
            errors[index] = (type(error).__name__, str(error), None)
            raise TransactionCanceledException(errors) from error


def _restore(table: Any, hash_key: Any, range_key: Any, item: Any) -> None:
    """Put an item back as it was before the transaction wrote it (absent if it did not exist)."""
    if range_key is not None:
        if item is None:
            table.items.get(hash_key, {}).pop(range_key, None)
        else:
            table.items[hash_key][range_key] = item
    elif item is None:
        table.items.pop(hash_key, None)
    else:
        table.items[hash_key] = item


def _undo(undo: list[Callable[[], None]]) -> None:
    for step in reversed(undo):
        step()


def _stream_lengths(backend: DynamoDBBackend) -> dict[str, int]:
    return {name: len(table.stream_shard.items) for name, table in backend.tables.items() if table.stream_shard}


def _without_records_of_cancelled_writes(transact: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(transact)
    def transact_write_items(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        lengths = _stream_lengths(backend)
        try:
            return transact(backend, *args, **kwargs)
        except BaseException:
            for name, length in lengths.items():
                table = backend.tables.get(name)
                if table is not None and table.stream_shard is not None:
                    del table.stream_shard.items[length:]
            raise

    return transact_write_items


@contextmanager
def faithful_dynamodb_writes() -> Iterator[None]:
    """moto's DynamoDB with the guarantees above, until exit."""
    originals = [
        (owner, name, getattr(owner, name)) for owner, names in _SERIALISED for name in names if hasattr(owner, name)
    ]
    for owner, name, method in originals:
        transact = owner is DynamoDBBackend and name == "transact_write_items"
        patched = _without_records_of_cancelled_writes(transact_write_items) if transact else method
        setattr(owner, name, _serialised(patched))
    try:
        yield
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)
