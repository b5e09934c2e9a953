"""MediaStore on S3: presigned links, small reads, and a streamed copy of a provider's output into the bucket."""

from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from avatar_pipeline.adapters.safe_download import (
    OutputUrlPolicy,
    RefusedOutputUrlError,
    SafeDownloader,
    redact_url,
)
from avatar_pipeline.domain.errors import InputGoneError, OutputCopyInterruptedError, OutputUnusableError
from avatar_pipeline.domain.models import MAX_PRESIGNED_URL_SECONDS, PresignedUrl, S3Object, utcnow
from avatar_pipeline.domain.mp4_stream import Mp4StreamCheck, Mp4StructureError

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 refuses multipart parts under 5 MiB (except the last one) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB
# Parts uploading while the next one downloads. Each holds a part in memory; S3 takes parts side by side.
UPLOADS_IN_FLIGHT = 2
# Statuses that mean the output will never be there, however often we ask.
GONE_STATUSES = frozenset({403, 404, 410})
VIDEO_CONTENT_TYPE = "video/mp4"
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRESIGN_HANDLER_ID = "avatar_pipeline.adapters.s3.presign_sigv4"


class LinkSignerError(RuntimeError):
    """The link signer's secret holds no usable access key."""


class LinkSigner:
    """The S3 client that presigns links with the access key of the link-signing IAM user.

    A presigned link dies with the credentials that signed it; the functions' role credentials are temporary, this
    user's access key is not, so links signed with it live as long as they say. The key is kept in a Secrets Manager
    secret ({"access_key_id": ..., "secret_access_key": ...}), read through `read_secret` when a link is signed (so an
    invocation that signs nothing never reads it; its cache keeps repeated reads cheap). A client is built with
    `make_client(access_key_id, secret_access_key)` the first time and again only when the key changed (rotation).
    Neither the key nor the client is ever logged.
    """

    def __init__(self, read_secret: Callable[[], Mapping[str, Any]], make_client: Callable[[str, str], Any]) -> None:
        self._read_secret = read_secret
        self._make_client = make_client
        self._lock = threading.Lock()
        self._fingerprint = b""  # a digest of the key the client was built with: the key itself is not kept here
        self._client: Any = None

    def __repr__(self) -> str:
        return "LinkSigner()"

    def client(self) -> Any:
        secret = self._read_secret()
        key_id = str(secret.get("access_key_id") or "").strip()
        secret_key = str(secret.get("secret_access_key") or "").strip()
        if not key_id or not secret_key:
            raise LinkSignerError(
                "the link signer's secret (LINK_SIGNER_SECRET_ID) holds no access_key_id and secret_access_key"
            )
        fingerprint = hashlib.sha256(f"{key_id}\0{secret_key}".encode()).digest()
        with self._lock:
            if self._client is None or fingerprint != self._fingerprint:
                client = self._make_client(key_id, secret_key)
                _presign_with_sigv4(client)
                self._client, self._fingerprint = client, fingerprint
                logger.info("links are presigned with the link signer's access key (read from its secret)")
            return self._client


class S3RangeSource:
    """An uploaded object read in pieces with ranged GETs, so a check reads only the bytes it looks at.

    Pinned to the ETag the S3 event announced: if the object is overwritten meanwhile, reads fail rather than mix
    two versions.
    """

    def __init__(self, s3_client: Any, obj: S3Object) -> None:
        self._s3 = s3_client
        self._obj = obj
        self.size = obj.size

    def read_range(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self.size:
            return b""
        last = min(offset + length, self.size) - 1
        request: dict[str, Any] = {"Bucket": self._obj.bucket, "Key": self._obj.key, "Range": f"bytes={offset}-{last}"}
        if self._obj.etag:
            request["IfMatch"] = f'"{self._obj.etag.strip(chr(34))}"'
        try:
            body = self._s3.get_object(**request)["Body"]
        except ClientError as exc:
            if _error_code(exc) in (*_MISSING_CODES, "PreconditionFailed", "412"):
                raise InputGoneError(f"{self._obj.key} was deleted or replaced before it could be checked") from exc
            raise
        try:
            return bytes(body.read())
        finally:
            body.close()


class S3MediaStore:
    """Implements `ports.MediaStore` with a boto3 S3 client and a `SafeDownloader` for provider outputs.

    `copy_from_url` uploads parts (up to UPLOADS_IN_FLIGHT at once) while the next one downloads, so a copy takes
    about as long as the slower of the two rather than their sum. It holds at most UPLOADS_IN_FLIGHT + 1 parts in
    memory (about `part_size` bytes each, plus the chunk that tipped one over): the one downloading and those
    uploading; nothing is written to disk. Without a
    `downloader`, every output URL is refused (an empty allow-list): downloads are only ever allowed on purpose.

    Links are presigned with the `link_signer`'s client when there is one, else with `s3_client`'s own credentials.
    """

    def __init__(
        self,
        s3_client: Any,
        downloader: SafeDownloader | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        *,
        link_signer: LinkSigner | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum), got {part_size}")
        self._s3 = s3_client
        _presign_with_sigv4(s3_client)
        self._downloader = downloader if downloader is not None else SafeDownloader(OutputUrlPolicy())
        self._part_size = part_size
        self._link_signer = link_signer
        self._clock = clock
        self._warned_of_temporary_credentials = False

    def presigned_get(self, obj: S3Object, expires_in: int) -> PresignedUrl:
        if expires_in <= 0:
            raise ValueError(f"expires_in must be positive, got {expires_in}")
        lifetime = min(expires_in, MAX_PRESIGNED_URL_SECONDS)
        signer = self._link_signer.client() if self._link_signer is not None else self._s3
        # The link's clock starts at its X-Amz-Date: whole seconds, at or after this moment.
        signed_at = self._clock().astimezone(UTC).replace(microsecond=0)
        url = signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": obj.bucket, "Key": obj.key},
            ExpiresIn=lifetime,
        )
        expires_at = signed_at + timedelta(seconds=lifetime)
        # Read after signing: signing refreshes credentials that were about to expire.
        credentials_end = credentials_expiry(signer)
        if credentials_end is not None and credentials_end < expires_at:
            expires_at = credentials_end
            logger.debug(
                "a link to s3://%s/%s works until %s, when the credentials that signed it expire (asked: %d s)",
                obj.bucket,
                obj.key,
                f"{expires_at:%Y-%m-%d %H:%M:%S} UTC",
                lifetime,
            )
        elif credentials_end is None and self._link_signer is None:
            self._warn_if_temporary(signer)
        return PresignedUrl(url=str(url), expires_at=expires_at)

    def _warn_if_temporary(self, signer: Any) -> None:
        """Temporary credentials whose expiry botocore is not told (a Lambda role's, from the environment) end a link
        at a moment nobody knows: said once per store (per container)."""
        if self._warned_of_temporary_credentials or not getattr(_signing_credentials(signer), "token", None):
            return
        self._warned_of_temporary_credentials = True
        logger.warning(
            "links are presigned with temporary credentials whose expiry is not known: a link may stop working"
            " before its expiry; set LINK_SIGNER_SECRET_ID so links are signed with a long-term key"
        )

    def unchanged(self, obj: S3Object) -> bool:
        request = {"Bucket": obj.bucket, "Key": obj.key}
        if obj.etag:
            request["IfMatch"] = f'"{obj.etag.strip(chr(34))}"'
        try:
            self._s3.head_object(**request)
        except ClientError as error:
            # A HEAD's error has no body: 404 (gone) and 412 (another ETag) are all it says.
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "412", "PreconditionFailed"):
                return False
            raise
        return True

    def read_small_object(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            if size > max_bytes:
                raise ValueError(f"s3://{bucket}/{key} is {size} bytes, more than the {max_bytes} bytes allowed")
            data = body.read(max_bytes + 1)
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ValueError(f"s3://{bucket}/{key} is more than the {max_bytes} bytes allowed")
        return bytes(data)

    def describe(self, bucket: str, key: str) -> S3Object | None:
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise
        return S3Object(bucket=bucket, key=key, etag=head["ETag"].strip('"'), size=head["ContentLength"])

    def source(self, obj: S3Object) -> S3RangeSource:
        return S3RangeSource(self._s3, obj)

    def copy_from_url(
        self, url: str, bucket: str, key: str, max_bytes: int, keep_alive: Callable[[], None] = lambda: None
    ) -> S3Object:
        if max_bytes > self._part_size * MAX_PARTS:
            raise ValueError(f"max_bytes {max_bytes} needs more than {MAX_PARTS} parts of {self._part_size} bytes")
        source = redact_url(url)
        try:
            with self._downloader.open(url) as response:
                _check_status(response, source)
                promised = _content_length(response)
                if promised is not None and promised > max_bytes:
                    raise OutputUnusableError(
                        f"the provider's output at {source} is {promised} bytes, more than the {max_bytes} allowed"
                    )
                return self._stream_to_s3(response, promised, source, bucket, key, max_bytes, keep_alive)
        except RefusedOutputUrlError as exc:
            raise RefusedOutputUrlError(f"the download of {source} was refused: {exc}") from exc
        except httpx.HTTPError as exc:
            raise OutputCopyInterruptedError(
                f"the download of {source} broke off ({type(exc).__name__}: {exc})"
            ) from exc
        except (ClientError, BotoCoreError) as exc:
            raise OutputCopyInterruptedError(f"S3 refused the copy to s3://{bucket}/{key}: {exc}") from exc

    def _stream_to_s3(
        self,
        response: httpx.Response,
        promised: int | None,
        source: str,
        bucket: str,
        key: str,
        max_bytes: int,
        keep_alive: Callable[[], None],
    ) -> S3Object:
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        pending: list[bytes] = []
        pending_size = 0
        total = 0
        mp4 = Mp4StreamCheck()
        uploader = ThreadPoolExecutor(max_workers=UPLOADS_IN_FLIGHT, thread_name_prefix="upload-part")
        uploading: deque[Future[dict[str, Any]]] = deque()
        try:
            for chunk in response.iter_bytes():
                keep_alive()
                if not chunk:
                    continue
                total = _within_size(total + len(chunk), max_bytes, source)
                _feed(mp4, chunk, source)
                pending.append(chunk)
                pending_size += len(chunk)
                if upload_id is None:
                    if not mp4.recognised:
                        continue  # no upload until the ftyp box says this is an MP4
                    upload_id = self._create_upload(bucket, key)
                if pending_size >= self._part_size:
                    self._next_part(uploader, uploading, parts, bucket, key, upload_id, pending)
                    pending_size = 0

            _check_whole(response, promised, total, source)
            # The whole file has gone by: only now can a missing moov/mdat or a cut-off last box show.
            _finish(mp4, source)
            assert upload_id is not None  # a recognised MP4 started the upload
            if pending:
                self._next_part(uploader, uploading, parts, bucket, key, upload_id, pending)
            while uploading:
                parts.append(uploading.popleft().result())
            completed = self._s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            wait(uploading)  # whatever becomes of them, no part may land after the abort
            if upload_id is not None:
                self._abort(bucket, key, upload_id)
            raise
        finally:
            uploader.shutdown(wait=True)
        etag = str(completed.get("ETag", "")).strip('"')
        logger.info("copied %s to s3://%s/%s: %d bytes in %d parts", source, bucket, key, total, len(parts))
        return S3Object(bucket=bucket, key=key, etag=etag, size=total)

    def discard_partial_copies(self, bucket: str, key: str) -> int:
        listing = self._s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
        stale = [upload["UploadId"] for upload in listing.get("Uploads", []) if upload["Key"] == key]
        for upload_id in stale:
            self._abort(bucket, key, upload_id)
        if stale:
            logger.info("aborted %d unfinished upload(s) of s3://%s/%s", len(stale), bucket, key)
        return len(stale)

    def _create_upload(self, bucket: str, key: str) -> str:
        created = self._s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=VIDEO_CONTENT_TYPE)
        return str(created["UploadId"])

    def _next_part(
        self,
        uploader: ThreadPoolExecutor,
        uploading: deque[Future[dict[str, Any]]],
        parts: list[dict[str, Any]],
        bucket: str,
        key: str,
        upload_id: str,
        chunks: list[bytes],
    ) -> None:
        """Start uploading `chunks` as the next part (emptying the list), once fewer than UPLOADS_IN_FLIGHT parts
        are uploading: that bounds the memory held, and raises a failed part's error here, before another starts."""
        while len(uploading) >= UPLOADS_IN_FLIGHT:
            parts.append(uploading.popleft().result())
        body = [b"".join(chunks)]
        chunks.clear()
        number = len(parts) + len(uploading) + 1
        # In the caller's context: a tracer's current span (the parts' calls belong to the copy's trace).
        in_context = contextvars.copy_context().run
        uploading.append(uploader.submit(in_context, self._upload_part, bucket, key, upload_id, number, body))

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, chunks: list[bytes]) -> dict[str, Any]:
        # `_next_part` hands the part over joined already (one item: joining it again returns it, copying nothing).
        uploaded = self._s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=b"".join(chunks),
        )
        return {"PartNumber": number, "ETag": uploaded["ETag"]}

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:
            # The original failure matters more; a lifecycle rule sweeps whatever this leaves behind.
            logger.exception("could not abort multipart upload %s of s3://%s/%s", upload_id, bucket, key)


def credentials_expiry(client: Any) -> datetime | None:
    """When the credentials `client` signs with expire (UTC), where botocore knows it: refreshable credentials (an
    assumed role, a container's or an instance's, SSO, or AWS_CREDENTIAL_EXPIRATION in the environment). None for
    long-term access keys, and for temporary ones given without their expiry.

    botocore has no public interface for this: its private one is read defensively, and an expiry it can no longer
    find is unknown (None), never an error.
    """
    credentials = _signing_credentials(client)
    expiry = getattr(credentials, "_expiry_time", None)
    if not isinstance(expiry, datetime):
        return None
    return expiry.astimezone(UTC) if expiry.tzinfo is not None else expiry.replace(tzinfo=UTC)


def _signing_credentials(client: Any) -> Any:
    get_credentials = getattr(client, "_get_credentials", None)
    if callable(get_credentials):
        try:
            return get_credentials()
        except Exception:
            return None
    return getattr(getattr(client, "_request_signer", None), "_credentials", None)


def _presign_with_sigv4(s3_client: Any) -> None:
    """Make the client presign with SigV4 even if it was built without `signature_version="s3v4"`.

    For backwards compatibility botocore presigns S3 URLs with SigV2 in regions that once supported it
    (us-east-1 among them) unless the client's config names a signature version, and buckets created since
    mid-2020 refuse SigV2. botocore's `choose-signer` hook lets us pick the S3 SigV4 signer instead.
    """
    events = getattr(getattr(s3_client, "meta", None), "events", None)
    if events is not None:
        events.register_first("choose-signer.s3", _choose_sigv4_for_presign, unique_id=_PRESIGN_HANDLER_ID)


def _choose_sigv4_for_presign(signature_version: str, signing_name: str = "s3", **_: Any) -> str | None:
    if signing_name != "s3":
        return None
    for suffix in ("-query", "-presign-post"):
        if signature_version in (f"v4{suffix}", f"s3v4{suffix}"):
            return f"s3v4{suffix}"
    return None  # not a presign, or a signer the client chose on purpose (v4a, S3 Express): leave it


def _check_status(response: httpx.Response, source: str) -> None:
    status = response.status_code
    if status in GONE_STATUSES:
        raise OutputUnusableError(f"the provider's output is gone (HTTP {status}) at {source}")
    if not 200 <= status < 300:
        raise OutputCopyInterruptedError(f"the provider's output at {source} answered HTTP {status}")


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _within_size(total: int, max_bytes: int, source: str) -> int:
    """`total`, the bytes downloaded so far, if the output may still be this big."""
    if total > max_bytes:
        raise OutputUnusableError(f"the provider's output at {source} is more than the {max_bytes} bytes allowed")
    return total


def _check_whole(response: httpx.Response, promised: int | None, total: int, source: str) -> None:
    """The download ended: all the bytes its Content-Length promised came (else it was cut off), and some did."""
    if promised is not None and response.num_bytes_downloaded < promised:
        raise OutputCopyInterruptedError(
            f"the download of {source} was truncated: got {response.num_bytes_downloaded} of {promised} bytes"
        )
    if total == 0:
        raise OutputUnusableError(f"the provider's output at {source} is empty")


def _feed(mp4: Mp4StreamCheck, chunk: bytes, source: str) -> None:
    try:
        mp4.feed(chunk)
    except Mp4StructureError as exc:
        raise _not_mp4(source, exc) from exc


def _finish(mp4: Mp4StreamCheck, source: str) -> None:
    try:
        mp4.finish()
    except Mp4StructureError as exc:
        raise _not_mp4(source, exc) from exc


def _not_mp4(source: str, reason: Mp4StructureError) -> OutputUnusableError:
    return OutputUnusableError(f"the provider's output at {source} is not an MP4 video: {reason}")


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
