"""S3's limits that the embedded S3 (moto) does not enforce on its own, so the local stack meets them as AWS would.

* An object key is at most 1,024 bytes of UTF-8: a longer one is refused with ``KeyTooLongError`` when the object is
  put, copied to, or a multipart upload of it is started.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from moto.s3.exceptions import S3ClientError
from moto.s3.models import S3Backend

__all__ = ["MAX_KEY_BYTES", "KeyTooLongError", "faithful_s3_limits"]

MAX_KEY_BYTES = 1024
# The backend methods that name a new object's key, and the name of that argument.
_KEY_ARGUMENTS = {"put_object": "key_name", "create_multipart_upload": "key_name", "copy_object": "dest_key_name"}


class KeyTooLongError(S3ClientError):
    code = "KeyTooLongError"

    def __init__(self) -> None:
        super().__init__("KeyTooLongError", "Your key is too long")


def _refusing_long_keys(method: Callable[..., Any], argument: str, position: int) -> Callable[..., Any]:
    @functools.wraps(method)
    def checked(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        key = kwargs[argument] if argument in kwargs else args[position]
        if len(str(key).encode()) > MAX_KEY_BYTES:
            raise KeyTooLongError()
        return method(self, *args, **kwargs)

    return checked


@contextmanager
def faithful_s3_limits() -> Iterator[None]:
    """While inside, the embedded S3 refuses what S3 refuses (see the module's docstring)."""
    originals = {name: getattr(S3Backend, name) for name in _KEY_ARGUMENTS}
    for name, argument in _KEY_ARGUMENTS.items():
        # From the signature (which follows functools.wraps), so a backend patched twice is read right too.
        position = list(inspect.signature(originals[name]).parameters).index(argument) - 1  # without self
        setattr(S3Backend, name, _refusing_long_keys(originals[name], argument, position))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(S3Backend, name, method)
