"""Give moto's DynamoDB two guarantees of the real service that the pipeline relies on.

- DynamoDB applies writes to one item one at a time: of two concurrent UpdateItem calls, the second sees the first's
  result. moto reads, changes and stores an item without a lock, so two threads can both "create" the same item and
  one write is lost. Serialising moto's write operations restores the real behaviour (and costs nothing in tests).
- A cancelled transaction leaves the table's stream as it was. moto rolls a failed TransactWriteItems back by putting
  a deep copy of each table in its place — with a copy of its stream shard, so every open shard iterator (a stream
  reader's) keeps reading the old shard and never sees another record, and the records of the rolled-back writes stay
  in the old one. The rolled-back table keeps the original shard instead, without the cancelled writes' records.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.dynamodb.models import DynamoDBBackend

_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")
_lock = threading.RLock()


def _serialised(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            return method(*args, **kwargs)

    return locked


def _stream_kept_on_rollback(transact: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(transact)
    def transact_write_items(backend: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        shards = {
            name: (table.stream_shard, len(table.stream_shard.items))
            for name, table in backend.tables.items()
            if table.stream_shard is not None
        }
        try:
            return transact(backend, *args, **kwargs)
        except BaseException:
            for name, (shard, length) in shards.items():
                table = backend.tables.get(name)
                if table is not None and table.stream_shard is not shard:
                    del shard.items[length:]
                    shard.table = table
                    table.stream_shard = shard
            raise

    return transact_write_items


@contextmanager
def faithful_dynamodb_writes() -> Iterator[None]:
    originals = {name: getattr(DynamoDBBackend, name) for name in _WRITES if hasattr(DynamoDBBackend, name)}
    for name, method in originals.items():
        patched = _stream_kept_on_rollback(method) if name == "transact_write_items" else method
        setattr(DynamoDBBackend, name, _serialised(patched))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(DynamoDBBackend, name, method)
