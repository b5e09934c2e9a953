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
- A key over DynamoDB's limits (a partition key over 2,048 bytes, a sort key over 1,024, in UTF-8) is refused with a
  ValidationException by every request that names it. moto refuses it only when it stores an item (PutItem,
  BatchWriteItem, a transaction's Put, an UpdateItem that creates one); GetItem, DeleteItem, an UpdateItem whose
  condition fails, BatchGetItem, TransactGetItems, a transaction's ConditionCheck or Delete and a Query for an
  oversize partition key all answered as if the key were fine. Nor did moto refuse an UpdateItem that sets a
  secondary index's key attribute over the limit, which DynamoDB refuses, writing nothing: here the update is undone
  (item and stream record) and refused. Index keys are refused in DynamoDB's words for them ("Size limit exceeded
  for Index Key ..."), where moto used its table-key message.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    HashKeyTooLong,
    MockValidationException,
    MultipleTransactionsException,
    RangeKeyTooLong,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.limits import HASH_KEY_MAX_LENGTH, RANGE_KEY_MAX_LENGTH
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
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


# ------------------------------------------------------------------------------------------------ key sizes


def _size(value: Any) -> int:
    """A key attribute's size as DynamoDB counts it (UTF-8 bytes for a string), as moto's own check counts it."""
    return int(DynamoType(value).size())


def _check_table_key(table: Any, key: dict[str, Any]) -> None:
    """Refuse a request naming a key over DynamoDB's limits, in DynamoDB's words (moto's exceptions carry them)."""
    hash_value = key.get(table.hash_key_attr)
    if hash_value and _size(hash_value) > HASH_KEY_MAX_LENGTH:
        raise HashKeyTooLong
    range_value = key.get(table.range_key_attr) if table.range_key_attr else None
    if range_value and _size(range_value) > RANGE_KEY_MAX_LENGTH:
        raise RangeKeyTooLong


def _check_index_keys(table: Any, attributes: dict[str, Any]) -> None:
    """Refuse an item whose secondary index key attribute (other than the table's own keys) is over its limit."""
    table_keys = {table.hash_key_attr, table.range_key_attr}
    for index in table.all_indexes():
        for element in index.schema:
            name = element["AttributeName"]
            value = attributes.get(name)
            if name in table_keys or not value:
                continue
            limit = HASH_KEY_MAX_LENGTH if element["KeyType"] == "HASH" else RANGE_KEY_MAX_LENGTH
            size = _size(value)
            if size > limit:
                raise MockValidationException(
                    f"One or more parameter values were invalid: Size limit exceeded for Index Key {name} "
                    f"Actual Size: {size} bytes Max Size: {limit} bytes IndexName: {index.name}"
                )


def _bound(method: Callable[..., Any], backend: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The method's arguments by name, however they were passed (read from its signature, as moto_s3 does)."""
    return dict(inspect.signature(method).bind(backend, *args, **kwargs).arguments)


def _refusing_long_keys(method: Callable[..., Any], key_argument: str) -> Callable[..., Any]:
    """GetItem, DeleteItem (and, through them, BatchGetItem, TransactGetItems, BatchWriteItem's deletes and every
    item a transaction names): the key is checked before anything is read."""

    @functools.wraps(method)
    def checked(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        arguments = _bound(method, backend, args, kwargs)
        _check_table_key(backend.get_table(arguments["table_name"]), arguments[key_argument])
        return method(backend, *args, **kwargs)

    return checked


def _refusing_long_item_keys(put_item: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(put_item)
    def checked(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        arguments = _bound(put_item, backend, args, kwargs)
        table = backend.get_table(arguments["table_name"])
        _check_table_key(table, arguments["item_attrs"])  # the table's keys first, as moto and DynamoDB do
        _check_index_keys(table, arguments["item_attrs"])
        return put_item(backend, *args, **kwargs)

    return checked


def _refusing_long_updated_keys(update_item: Callable[..., Any]) -> Callable[..., Any]:
    """The key is checked first (before a condition can fail on it); an update that leaves an index key over its
    limit is undone (the item as it was, its stream record dropped) and refused, as DynamoDB writes nothing then.
    moto applies an update to the stored item in place, so it is judged afterwards, under the writes' lock."""

    @functools.wraps(update_item)
    def checked(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        arguments = _bound(update_item, backend, args, kwargs)
        table = backend.get_table(arguments["table_name"])
        key = arguments["key"]
        _check_table_key(table, key)
        if table.hash_key_attr not in key:
            return update_item(backend, *args, **kwargs)  # moto's own answer to a key without its partition key
        hash_key = DynamoType(key[table.hash_key_attr])
        range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
        before = copy.deepcopy(table.get_item(hash_key, range_key))
        records = len(table.stream_shard.items) if table.stream_shard is not None else 0
        item = update_item(backend, *args, **kwargs)
        try:
            _check_index_keys(table, item.to_json()["Attributes"])
        except MockValidationException:
            _restore(table, hash_key, range_key, before)
            if table.stream_shard is not None:
                del table.stream_shard.items[records:]
            raise
        return item

    return checked


def _refusing_long_query_keys(query: Callable[..., Any]) -> Callable[..., Any]:
    """A Query for a partition key value over 2,048 bytes (of the table or an index)."""

    @functools.wraps(query)
    def checked(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        hash_key = _bound(query, backend, args, kwargs).get("hash_key_dict")
        if hash_key and _size(hash_key) > HASH_KEY_MAX_LENGTH:
            raise HashKeyTooLong
        return query(backend, *args, **kwargs)

    return checked


_KEY_LIMITS: dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    "get_item": lambda method: _refusing_long_keys(method, "keys"),
    "delete_item": lambda method: _refusing_long_keys(method, "key"),
    "put_item": _refusing_long_item_keys,
    "update_item": _refusing_long_updated_keys,
    "query": _refusing_long_query_keys,
}


@contextmanager
def _faithful_key_sizes() -> Iterator[None]:
    originals = {name: getattr(DynamoDBBackend, name) for name in _KEY_LIMITS}
    for name, refusing in _KEY_LIMITS.items():
        setattr(DynamoDBBackend, name, refusing(originals[name]))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(DynamoDBBackend, name, method)


@contextmanager
def faithful_dynamodb_writes() -> Iterator[None]:
    """moto's DynamoDB with the guarantees above, until exit."""
    # Key sizes are checked inside the lock: what `originals` captures below is already checking.
    with _faithful_key_sizes():
        originals = [
            (owner, name, getattr(owner, name))
            for owner, names in _SERIALISED
            for name in names
            if hasattr(owner, name)
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
