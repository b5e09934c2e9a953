"""What a copy leaves behind in S3 when it stops early: nothing, and what a dead copy left is discarded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws
from support.mp4 import fake_mp4

from avatar_pipeline.adapters.s3 import S3MediaStore
from avatar_pipeline.adapters.safe_download import OutputUrlPolicy, SafeDownloader

MIB = 1024 * 1024
BUCKET = "media-bucket"
KEY = "outputs/job-1/task-1.mp4"
SOURCE_URL = "https://cdn.provider.test/outputs/abc.mp4"


class CopyStopped(Exception):
    pass


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def unfinished_uploads(s3: Any, key: str | None = None) -> list[str]:
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return [upload["Key"] for upload in uploads if key is None or upload["Key"] == key]


def test_discarding_partial_copies_aborts_only_the_uploads_of_that_key(s3: Any) -> None:
    # Given two uploads to the output key left by dead copies, and one to another key
    for key in (KEY, KEY, "outputs/job-2/task-2.mp4"):
        s3.create_multipart_upload(Bucket=BUCKET, Key=key)
    store = S3MediaStore(s3)
    # When the next attempt discards partial copies of its key
    discarded = store.discard_partial_copies(BUCKET, KEY)
    # Then both of that key's uploads are gone and the other one is untouched
    assert discarded == 2
    assert unfinished_uploads(s3) == ["outputs/job-2/task-2.mp4"]


def test_discarding_with_nothing_left_behind_does_nothing(s3: Any) -> None:
    assert S3MediaStore(s3).discard_partial_copies(BUCKET, KEY) == 0


def test_a_keep_alive_that_stops_the_copy_leaves_no_upload_behind(s3: Any) -> None:
    # Given a download of several parts whose keep-alive stops the copy after the first part went up
    video = fake_mp4(12 * MIB)
    chunks = [video[i : i + MIB] for i in range(0, len(video), MIB)]
    looks = 0

    def keep_alive() -> None:
        nonlocal looks
        looks += 1
        if looks > 7:
            raise CopyStopped("taken over")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(len(video))}, content=iter(chunks))

    downloader = SafeDownloader(
        OutputUrlPolicy.parse(["*.provider.test"]), httpx.Client(transport=httpx.MockTransport(handler))
    )
    store = S3MediaStore(s3, downloader, part_size=5 * MIB)
    # When the copy runs
    with pytest.raises(CopyStopped):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, 64 * MIB, keep_alive)
    # Then what the keep-alive raised ended it, and the started upload was aborted
    assert looks == 8
    assert unfinished_uploads(s3) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
