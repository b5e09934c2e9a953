"""Give moto's DynamoDB the one guarantee of the real service that the pairing relies on.

DynamoDB applies writes to one item one at a time: of two concurrent UpdateItem calls, the second sees the first's
result. moto reads, changes and stores an item without a lock, so two threads can both "create" the same item and
one write is lost. Serialising moto's write operations restores the real behaviour (and costs nothing in tests).
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


@contextmanager
def serialised_item_writes() -> Iterator[None]:
    originals = {name: getattr(DynamoDBBackend, name) for name in _WRITES if hasattr(DynamoDBBackend, name)}
    for name, method in originals.items():
        setattr(DynamoDBBackend, name, _serialised(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(DynamoDBBackend, name, method)
