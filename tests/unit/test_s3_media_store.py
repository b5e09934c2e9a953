"""S3MediaStore against moto's S3, with the provider's download served by an httpx.MockTransport.

The downloads go through a `SafeDownloader` whose policy allows the test CDN (`*.provider.test`); its address checks
live in the transport, which the MockTransport replaces: test_safe_download.py covers those.
"""

from __future__ import annotations

import re
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from support.mp4 import FTYP, MOOV, fake_mp4, mp4_head, real_mp4
from support.network import PUBLIC_IP, FakeNetwork, FakeResolver, guarded_downloader, http_response

from avatar_pipeline.adapters.s3 import S3MediaStore
from avatar_pipeline.adapters.safe_download import OutputUrlPolicy, RefusedOutputUrlError, SafeDownloader
from avatar_pipeline.domain.errors import OutputCopyInterruptedError, OutputUnusableError
from avatar_pipeline.domain.models import S3Object

MIB = 1024 * 1024
BUCKET = "media-bucket"
KEY = "outputs/job-1/task-1.mp4"
SOURCE_URL = "https://cdn.provider.test/outputs/abc.mp4"
POLICY = OutputUrlPolicy.parse(["*.provider.test"])
NO_MAX = 2 * 1024 * MIB

Handler = Callable[[httpx.Request], httpx.Response]


# --- helpers -------------------------------------------------------------------------------------------------


def chunked(data: bytes, chunk_size: int) -> Iterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


def serve(
    chunks: Iterable[bytes],
    *,
    status: int = 200,
    content_length: int | None = None,
    seen: list[httpx.Request] | None = None,
) -> Handler:
    """A handler answering with a streamed body (an iterator, never one bytes object)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        headers = {"Content-Type": "video/mp4"}
        if content_length is not None:
            headers["Content-Length"] = str(content_length)
        return httpx.Response(status, headers=headers, content=iter(chunks))

    return handler


def downloader(handler: Handler) -> SafeDownloader:
    return SafeDownloader(POLICY, httpx.Client(transport=httpx.MockTransport(handler)))


class SpyS3:
    """Delegates to a real (moto) client, records multipart calls, and can fail one upload_part."""

    def __init__(self, client: Any, fail_on_part: int | None = None) -> None:
        self._client = client
        self._fail_on_part = fail_on_part
        self.part_sizes: list[int] = []
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def create_multipart_upload(self, **kwargs: Any) -> Any:
        self.calls.append("create")
        return self._client.create_multipart_upload(**kwargs)

    def upload_part(self, **kwargs: Any) -> Any:
        self.calls.append("upload_part")
        if kwargs["PartNumber"] == self._fail_on_part:
            raise ClientError(
                {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "UploadPart"
            )
        self.part_sizes.append(len(kwargs["Body"]))
        return self._client.upload_part(**kwargs)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        self.calls.append("complete")
        return self._client.complete_multipart_upload(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        self.calls.append("abort")
        return self._client.abort_multipart_upload(**kwargs)


class CountingS3:
    """A stand-in S3 client that keeps no bytes: it only counts part sizes (for the memory test)."""

    def __init__(self) -> None:
        self.part_sizes: list[int] = []
        self.aborted = False

    def create_multipart_upload(self, **_: Any) -> dict[str, str]:
        return {"UploadId": "upload-1"}

    def upload_part(self, *, Body: bytes, PartNumber: int, **_: Any) -> dict[str, str]:
        self.part_sizes.append(len(Body))
        return {"ETag": f'"etag-{PartNumber}"'}

    def complete_multipart_upload(self, **_: Any) -> dict[str, str]:
        return {"ETag": f'"final-{len(self.part_sizes)}"'}

    def abort_multipart_upload(self, **_: Any) -> None:
        self.aborted = True


def multipart_uploads(s3: Any) -> list[Any]:
    return list(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def object_exists(s3: Any, key: str = KEY) -> bool:
    return int(s3.list_objects_v2(Bucket=BUCKET, Prefix=key)["KeyCount"]) > 0


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


# --- unchanged: what was checked is what the provider would download ------------------------------------------


def test_an_input_is_unchanged_until_it_is_overwritten_or_deleted(s3: Any) -> None:
    # Given an upload, as its S3 event named it (ETag as S3 gives it, quoted)
    etag = s3.put_object(Bucket=BUCKET, Key="inbox/job/face.png", Body=b"first")["ETag"]
    store = S3MediaStore(s3)
    upload = S3Object(bucket=BUCKET, key="inbox/job/face.png", etag=etag.strip('"'), size=5)
    # Then it is unchanged while it is there as it was
    assert store.unchanged(upload)
    # and no longer once another upload replaced it, or it was deleted
    s3.put_object(Bucket=BUCKET, Key="inbox/job/face.png", Body=b"second")
    assert not store.unchanged(upload)
    s3.delete_object(Bucket=BUCKET, Key="inbox/job/face.png")
    assert not store.unchanged(upload)


# --- copy_from_url: the happy path ---------------------------------------------------------------------------


def test_copy_streams_a_large_mp4_into_s3_in_several_parts(s3: Any) -> None:
    # Given a 12 MiB MP4 served in 256 KiB chunks and a store cutting 5 MiB parts
    video = fake_mp4(12 * MIB)
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(chunked(video, 256 * 1024))), part_size=5 * MIB)

    # When it is copied into the bucket
    result = store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the object has identical bytes, the MP4 content type, and came in three parts (5 + 5 + 2 MiB)
    stored = s3.get_object(Bucket=BUCKET, Key=KEY)
    assert stored["Body"].read() == video
    assert stored["ContentType"] == "video/mp4"
    assert spy.part_sizes == [5 * MIB, 5 * MIB, 2 * MIB]
    assert stored["ETag"].strip('"').endswith("-3")
    # And the returned S3Object describes it, with the ETag unquoted
    assert result == S3Object(bucket=BUCKET, key=KEY, etag=stored["ETag"].strip('"'), size=len(video))
    assert multipart_uploads(s3) == []


def test_copy_of_a_small_mp4_uses_a_single_part(s3: Any) -> None:
    # Given an MP4 smaller than one part, sent with its Content-Length
    video = fake_mp4(300 * 1024)
    store = S3MediaStore(s3, downloader(serve(chunked(video, 64 * 1024), content_length=len(video))), part_size=5 * MIB)

    # When it is copied
    result = store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then it lands whole, as a one-part upload
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == video
    assert result.size == len(video)
    assert result.etag.endswith("-1")


def test_copy_reads_enough_bytes_to_recognise_an_mp4_split_across_tiny_chunks(s3: Any) -> None:
    # Given an MP4 whose first chunks are 3 bytes each, so "ftyp" only appears in the third chunk
    video = fake_mp4(4096)
    store = S3MediaStore(s3, downloader(serve(chunked(video, 3))))

    # When it is copied
    result = store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then it is accepted as an MP4 and stored intact
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == video
    assert result.size == len(video)


def test_copy_follows_redirects_to_the_file(s3: Any) -> None:
    # Given a provider URL that redirects to a CDN
    video = fake_mp4(1000)
    cdn_url = "https://cdn2.provider.test/real.mp4"

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == SOURCE_URL:
            return httpx.Response(302, headers={"Location": cdn_url})
        return httpx.Response(200, content=iter([video]))

    store = S3MediaStore(s3, downloader(handler))

    # When it is copied
    store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the file behind the redirect is what lands
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == video


def test_copy_again_to_the_same_key_overwrites_it(s3: Any) -> None:
    # Given a key that already holds an earlier copy
    first, second = fake_mp4(2000), fake_mp4(3000)
    S3MediaStore(s3, downloader(serve([first]))).copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # When the copy runs again for the same key
    result = S3MediaStore(s3, downloader(serve([second]))).copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the key holds the latest bytes, once
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == second
    assert result.size == len(second)
    assert s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 1


def test_copy_of_a_real_mp4_through_the_guarded_transport_is_stored_intact(s3: Any) -> None:
    # Given a real MP4 (made by ffmpeg) on an allow-listed CDN host that resolves to a public address
    video = real_mp4()
    network = FakeNetwork({PUBLIC_IP: http_response(body=video, headers={"Content-Type": "video/mp4"})})
    downloader = guarded_downloader(POLICY, FakeResolver({"cdn.provider.test": [PUBLIC_IP]}), network)

    # When it is copied through the whole download path (policy, DNS check, TLS to the checked address)
    result = S3MediaStore(s3, downloader).copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the object holds it byte for byte, fetched from the checked address
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == video
    assert result.size == len(video)
    assert network.addresses == [PUBLIC_IP]


# --- copy_from_url: what the provider sends is unusable (permanent) -----------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://cdn.provider.test/outputs/abc.mp4", "is not https"),
        ("https://evil.example/outputs/abc.mp4", "not in the allowed output hosts"),
    ],
)
def test_copy_of_a_url_the_policy_refuses_is_unusable_and_starts_no_upload(s3: Any, url: str, reason: str) -> None:
    # Given a URL the policy refuses
    seen: list[httpx.Request] = []
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve([fake_mp4(1000)], seen=seen)))

    # When it is copied, Then it is unusable with the reason, nothing was requested and no upload was started
    with pytest.raises(OutputUnusableError, match=f"the download of {url} was refused: .*{reason}"):
        store.copy_from_url(url, BUCKET, KEY, NO_MAX)
    assert seen == [] and spy.calls == []
    assert not object_exists(s3)


def test_copy_from_a_host_resolving_to_a_private_address_is_unusable_and_starts_no_upload(s3: Any) -> None:
    # Given an allow-listed host whose DNS answers 10.0.0.7
    network = FakeNetwork({"10.0.0.7": http_response(body=fake_mp4(1000))})
    spy = SpyS3(s3)
    store = S3MediaStore(spy, guarded_downloader(POLICY, FakeResolver({"cdn.provider.test": ["10.0.0.7"]}), network))

    # When it is copied, Then it is refused for good (not an interruption), before any connection or upload
    with pytest.raises(RefusedOutputUrlError, match=re.escape("resolves to 10.0.0.7, private")):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert network.connections == [] and spy.calls == []
    assert not object_exists(s3)


def test_store_without_a_downloader_refuses_every_url(s3: Any) -> None:
    # Given a store built without a downloader (an empty allow-list)
    store = S3MediaStore(s3)

    # When any output is copied, Then it is refused: downloads are only ever allowed on purpose
    with pytest.raises(RefusedOutputUrlError, match="not in the allowed output hosts"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)


def test_copy_rejects_an_mp4_without_its_index_and_leaves_nothing_behind(s3: Any) -> None:
    # Given 6 MiB that start like an MP4 (ftyp) but hold only media data, no moov box (unplayable)
    body = FTYP + struct.pack(">I4s", 6 * MIB - len(FTYP), b"mdat") + bytes(6 * MIB - len(FTYP) - 8)
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(chunked(body, MIB))), part_size=5 * MIB)

    # When it is copied
    with pytest.raises(OutputUnusableError, match="is not an MP4 video: it has no 'moov' box"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the upload it started (the ftyp looked right) was aborted: no parts, no object
    assert spy.calls[0] == "create" and spy.calls[-1] == "abort" and "complete" not in spy.calls
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


def test_copy_rejects_an_mp4_whose_last_box_is_cut_short(s3: Any) -> None:
    # Given an MP4 whose mdat announces 1 MiB but the body (sent without Content-Length) stops after 1000 bytes
    body = FTYP + MOOV + struct.pack(">I4s", MIB, b"mdat") + bytes(1000)
    store = S3MediaStore(s3, downloader(serve([body])))

    # When it is copied, Then it is not a usable MP4 and nothing is stored
    with pytest.raises(OutputUnusableError, match="'mdat' box runs past the end of the file"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


def test_copy_rejects_a_body_that_is_not_an_mp4(s3: Any) -> None:
    # Given a URL that serves an HTML error page with status 200
    page = b"<html><body>Access denied</body></html>" * 100
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(chunked(page, 512))))

    # When it is copied
    with pytest.raises(OutputUnusableError, match="is not an MP4"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then nothing was stored and no multipart upload was even started
    assert not object_exists(s3)
    assert multipart_uploads(s3) == []
    assert "create" not in spy.calls


def test_copy_rejects_a_body_too_short_to_be_an_mp4(s3: Any) -> None:
    # Given a body of five bytes
    store = S3MediaStore(s3, downloader(serve([b"\x00\x00\x00\x18f"])))

    # When it is copied, Then it is not an MP4
    with pytest.raises(OutputUnusableError, match="is not an MP4"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert not object_exists(s3)


def test_copy_rejects_an_empty_body(s3: Any) -> None:
    # Given a 200 answer with no bytes at all
    store = S3MediaStore(s3, downloader(serve([], content_length=0)))

    # When it is copied, Then the output is unusable and nothing is stored
    with pytest.raises(OutputUnusableError, match="empty"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert not object_exists(s3)


@pytest.mark.parametrize("status", [403, 404, 410])
def test_copy_of_an_output_that_is_gone_is_unusable(s3: Any, status: int) -> None:
    # Given a provider URL that answers `status` (expired or deleted output)
    store = S3MediaStore(s3, downloader(serve([b"gone"], status=status)))

    # When it is copied, Then the failure is permanent and names the status
    with pytest.raises(OutputUnusableError, match=rf"the provider's output is gone \(HTTP {status}\)"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert not object_exists(s3)


def test_copy_error_messages_leave_out_the_urls_query_string(s3: Any) -> None:
    # Given a presigned provider URL (credentials in the query string) that is gone
    store = S3MediaStore(s3, downloader(serve([b""], status=404)))

    # When it is copied
    with pytest.raises(OutputUnusableError) as caught:
        store.copy_from_url(SOURCE_URL + "?X-Amz-Signature=s3cr3t&token=abc", BUCKET, KEY, NO_MAX)

    # Then the message names the file but not its credentials
    assert SOURCE_URL in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_copy_of_an_output_announced_larger_than_the_limit_is_unusable_before_any_upload(s3: Any) -> None:
    # Given an output whose Content-Length exceeds the limit
    video = fake_mp4(2 * MIB)
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(chunked(video, MIB), content_length=len(video))))

    # When it is copied with a 1 MiB limit
    with pytest.raises(OutputUnusableError, match="more than the 1048576"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, MIB)

    # Then no upload was started and nothing is stored
    assert spy.calls == []
    assert not object_exists(s3)


def test_copy_of_a_stream_growing_past_the_limit_is_unusable_and_aborted(s3: Any) -> None:
    # Given an 11 MiB MP4 without Content-Length, and a 10 MiB limit
    video = fake_mp4(11 * MIB)
    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(chunked(video, MIB))), part_size=5 * MIB)

    # When it is copied
    with pytest.raises(OutputUnusableError, match="more than the"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, 10 * MIB)

    # Then the parts already sent were thrown away: upload aborted, nothing stored
    assert spy.calls[0] == "create"
    assert spy.calls[-1] == "abort"
    assert "complete" not in spy.calls
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


# --- copy_from_url: the copy broke off (worth retrying) ------------------------------------------------------


def test_copy_of_a_truncated_download_is_interrupted_and_aborted(s3: Any) -> None:
    # Given a server promising 12 MiB but closing after 7 MiB (one 5 MiB part already uploaded)
    video = fake_mp4(12 * MIB)
    spy = SpyS3(s3)
    store = S3MediaStore(
        spy, downloader(serve(chunked(video[: 7 * MIB], MIB), content_length=len(video))), part_size=5 * MIB
    )

    # When it is copied
    with pytest.raises(OutputCopyInterruptedError, match="truncated"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the multipart upload was aborted and no object appeared
    assert spy.part_sizes == [5 * MIB]
    assert spy.calls[-1] == "abort"
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_copy_from_a_failing_server_is_interrupted(s3: Any, status: int) -> None:
    # Given a provider CDN answering `status`
    store = S3MediaStore(s3, downloader(serve([b"busy"], status=status)))

    # When it is copied, Then it is worth another attempt
    with pytest.raises(OutputCopyInterruptedError, match=f"HTTP {status}"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
    assert not object_exists(s3)


def test_copy_that_cannot_connect_is_interrupted(s3: Any) -> None:
    # Given a host that cannot be reached
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    store = S3MediaStore(s3, downloader(handler))

    # When it is copied, Then it is worth another attempt
    with pytest.raises(OutputCopyInterruptedError, match="ConnectError"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)


def test_copy_whose_download_times_out_midway_is_interrupted_and_aborted(s3: Any) -> None:
    # Given a download that stalls (read timeout) after 6 MiB
    video = fake_mp4(6 * MIB)

    def stalling() -> Iterator[bytes]:
        yield from chunked(video, MIB)
        raise httpx.ReadTimeout("timed out")

    spy = SpyS3(s3)
    store = S3MediaStore(spy, downloader(serve(stalling())), part_size=5 * MIB)

    # When it is copied
    with pytest.raises(OutputCopyInterruptedError, match="ReadTimeout"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the started upload was aborted
    assert spy.calls[-1] == "abort"
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


def test_copy_that_s3_refuses_midway_is_interrupted_and_aborted(s3: Any) -> None:
    # Given S3 throttling the second part of a 12 MiB copy
    video = fake_mp4(12 * MIB)
    spy = SpyS3(s3, fail_on_part=2)
    store = S3MediaStore(spy, downloader(serve(chunked(video, MIB))), part_size=5 * MIB)

    # When it is copied
    with pytest.raises(OutputCopyInterruptedError, match="SlowDown"):
        store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)

    # Then the upload was aborted, leaving neither parts nor an object
    assert spy.calls[-1] == "abort"
    assert multipart_uploads(s3) == []
    assert not object_exists(s3)


# --- copy_from_url: memory ----------------------------------------------------------------------------------


def test_copy_memory_stays_bounded_by_the_part_size() -> None:
    # Given a 64 MiB MP4 streamed in 1 MiB chunks, a 5 MiB part size, and an S3 stand-in that keeps no bytes
    part_size, chunk_size, total_size = 5 * MIB, MIB, 64 * MIB
    pulled: list[int] = []
    head = mp4_head(total_size)  # ftyp, moov, and an mdat header spanning the rest

    def source() -> Iterator[bytes]:
        for index in range(total_size // chunk_size):
            pulled.append(index)
            yield head + bytes(chunk_size - len(head)) if index == 0 else bytes(chunk_size)

    s3 = CountingS3()
    store = S3MediaStore(s3, downloader(serve(source(), content_length=total_size)), part_size=part_size)

    # When it is copied, measuring allocations only around the copy
    started = time.monotonic()
    result, peak = _copy_measuring_peak_memory(store)
    elapsed = time.monotonic() - started

    # Then every byte went through, in parts of about the part size...
    assert result.size == total_size
    assert sum(s3.part_sizes) == total_size
    assert all(part_size <= size < part_size + chunk_size for size in s3.part_sizes[:-1])
    assert len(pulled) == total_size // chunk_size
    # ...while the peak never came near the file size: at most 3 parts' worth plus slack
    assert peak < 3 * part_size + 2 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert elapsed < 3.0


def test_a_part_uploads_while_the_next_one_downloads() -> None:
    # Given an S3 that finishes uploading part 1 only once the download has moved on to part 2's bytes
    part_size, chunk_size, total_size = 5 * MIB, MIB, 12 * MIB
    video = fake_mp4(total_size)
    moved_on = threading.Event()

    def source() -> Iterator[bytes]:
        for index, chunk in enumerate(chunked(video, chunk_size)):
            if index == part_size // chunk_size + 1:  # the first chunk after part 1's
                moved_on.set()
            yield chunk

    class WaitingS3(CountingS3):
        def upload_part(self, *, Body: bytes, PartNumber: int, **kwargs: Any) -> dict[str, str]:
            if PartNumber == 1 and not moved_on.wait(5):
                raise AssertionError("the download stood still while part 1 uploaded")
            return super().upload_part(Body=Body, PartNumber=PartNumber, **kwargs)

    s3 = WaitingS3()
    store = S3MediaStore(s3, downloader(serve(source(), content_length=total_size)), part_size=part_size)

    # When it is copied, Then it completes, every byte in its part
    assert store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX).size == total_size
    assert sum(s3.part_sizes) == total_size
    assert not s3.aborted


def test_copy_memory_stays_bounded_when_s3_is_slower_than_the_download() -> None:
    # Given parts that take a while to upload, so the next one is always downloaded first
    part_size, chunk_size, total_size = 5 * MIB, MIB, 40 * MIB
    head = mp4_head(total_size)

    def source() -> Iterator[bytes]:
        for index in range(total_size // chunk_size):
            yield head + bytes(chunk_size - len(head)) if index == 0 else bytes(chunk_size)

    class SlowS3(CountingS3):
        def upload_part(self, *, Body: bytes, PartNumber: int, **kwargs: Any) -> dict[str, str]:
            time.sleep(0.02)
            return super().upload_part(Body=Body, PartNumber=PartNumber, **kwargs)

    s3 = SlowS3()
    store = S3MediaStore(s3, downloader(serve(source(), content_length=total_size)), part_size=part_size)

    # When it is copied, measuring allocations only around the copy
    result, peak = _copy_measuring_peak_memory(store)

    # Then the part uploading and the part downloading were all it held: at most 3 parts' worth plus slack
    assert result.size == total_size
    assert peak < 3 * part_size + 2 * MIB, f"peak {peak / MIB:.1f} MiB"


# --- presigned_get and read_small_object ---------------------------------------------------------------------


def test_presigned_get_is_a_sigv4_url_for_the_key_with_its_expiry(s3: Any) -> None:
    # Given a store over a plain client (no explicit signature version)
    store = S3MediaStore(s3)

    # When a link is presigned for 15 minutes
    link = store.presigned_get(S3Object(bucket=BUCKET, key=KEY), 900)

    # Then it points at the key, signed with SigV4, and says when it expires
    assert BUCKET in link.url
    assert KEY in link.url
    assert "X-Amz-Expires=900" in link.url
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link.url


def test_read_small_object_returns_none_for_a_missing_key(s3: Any) -> None:
    # Given an empty bucket, When a missing key is read, Then there is nothing
    assert S3MediaStore(s3).read_small_object(BUCKET, "inbox/job-1/job.json", 1024) is None


def test_read_small_object_returns_the_bytes_of_a_present_key(s3: Any) -> None:
    # Given a small object
    s3.put_object(Bucket=BUCKET, Key="inbox/job-1/job.json", Body=b'{"mode": "pro"}')

    # When it is read, Then its bytes come back
    assert S3MediaStore(s3).read_small_object(BUCKET, "inbox/job-1/job.json", 1024) == b'{"mode": "pro"}'


def test_read_small_object_refuses_an_object_over_the_limit(s3: Any) -> None:
    # Given an object of 2 KiB
    s3.put_object(Bucket=BUCKET, Key="inbox/job-1/job.json", Body=b"x" * 2048)

    # When it is read with a 1 KiB limit, Then it is refused with the sizes named
    with pytest.raises(ValueError, match="2048 bytes, more than the 1024"):
        S3MediaStore(s3).read_small_object(BUCKET, "inbox/job-1/job.json", 1024)


def test_store_refuses_a_part_size_below_the_s3_minimum(s3: Any) -> None:
    # Given a part size S3 would reject (1 MiB), When a store is built, Then it is refused up front
    with pytest.raises(ValueError, match="part_size"):
        S3MediaStore(s3, part_size=MIB)


def _copy_measuring_peak_memory(store: S3MediaStore) -> tuple[S3Object, int]:
    """The copy's result and the most memory it held at once (Python allocations, traced only around it)."""
    tracemalloc.start()
    try:
        result = store.copy_from_url(SOURCE_URL, BUCKET, KEY, NO_MAX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak
