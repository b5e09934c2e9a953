"""The embedded S3 refuses keys longer than S3's 1,024 bytes, as S3 does (moto alone stores them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from avatar_local.twin.aws import EmbeddedAws

BUCKET = "limits-test"
LONGEST = "k" * 1024
TOO_LONG = "k" * 1025


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    with EmbeddedAws("us-east-1") as embedded:
        client = embedded.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_a_key_of_1024_bytes_is_stored(s3: Any) -> None:
    s3.put_object(Bucket=BUCKET, Key=LONGEST, Body=b"x")
    assert s3.get_object(Bucket=BUCKET, Key=LONGEST)["Body"].read() == b"x"


def test_a_key_of_1025_bytes_is_refused_however_the_object_would_be_written(s3: Any) -> None:
    """Given a key one byte over S3's limit (or 342 three-byte characters), then a put, a copy to it and a multipart
    upload of it are each refused with S3's KeyTooLongError."""
    s3.put_object(Bucket=BUCKET, Key="source", Body=b"x")
    attempts = {
        "put": lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b"x"),
        "copy": lambda key: s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": "source"}),
        "multipart": lambda key: s3.create_multipart_upload(Bucket=BUCKET, Key=key),
    }
    for how, attempt in attempts.items():
        for key in (TOO_LONG, "€" * 342):
            with pytest.raises(ClientError) as refused:
                attempt(key)
            assert refused.value.response["Error"]["Code"] == "KeyTooLongError", how
