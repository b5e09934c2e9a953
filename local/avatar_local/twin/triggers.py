"""The event sources of template.yaml, played locally: S3 notifications, API Gateway, schedules, DynamoDB streams,
SQS queues.

Each one hands its function the event Lambda would, with Lambda's delivery rules: asynchronous invocations are
retried and then sent to the on-failure destination; stream batches are retried from the first failed record and
then sent to the on-failure destination; queue messages are deleted once the function is done with them, and
otherwise come back after the queue's visibility timeout.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from avatar_local.simulators.faults import SeededDecider
from avatar_local.twin.aws import AwsClients, EmbeddedAws
from avatar_local.twin.aws_faults import AwsFaultPlan
from avatar_local.twin.event_filter import filterable_record, matches_any
from avatar_local.twin.runtime import FunctionPool, InvocationError

logger = logging.getLogger("avatar_local")


class AsyncInvoker:
    """Lambda's asynchronous invocation: a queue, retries, then the on-failure destination (an SQS queue)."""

    def __init__(self, pool: FunctionPool, aws: AwsClients, max_retries: int, failure_queue_url: str | None) -> None:
        self._pool = pool
        self._aws = aws
        self._max_retries = max_retries
        self._failure_queue_url = failure_queue_url
        # As many invocations at once as the function has execution environments (at least 4, as before).
        self._executor = ThreadPoolExecutor(
            max_workers=max(4, pool.workers), thread_name_prefix=f"async-{pool.runtime.name}"
        )
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._in_flight > 0

    def submit(self, event: Any) -> None:
        with self._lock:
            self._in_flight += 1
        self._executor.submit(self._run, event)

    def _run(self, event: Any) -> None:
        try:
            for attempt in range(self._max_retries + 1):
                try:
                    self._pool.invoke(event)
                    return
                except InvocationError as error:
                    logger.warning("%s failed (attempt %d): %s", self._pool.runtime.name, attempt + 1, error)
                    last_error = error
                    time.sleep(min(2**attempt, 5))
            self._send_to_destination(event, str(last_error))
        finally:
            with self._lock:
                self._in_flight -= 1

    def _send_to_destination(self, event: Any, error: str) -> None:
        if not self._failure_queue_url:
            logger.error("%s failed for good and has no destination; event dropped", self._pool.runtime.name)
            return
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(),
            "requestContext": {
                "functionArn": self._pool.runtime.name,
                "condition": "RetriesExhausted",
                "approximateInvokeCount": self._max_retries + 1,
            },
            "requestPayload": event,
            "responsePayload": {"errorMessage": error[-2000:]},
        }
        self._aws.client("sqs").send_message(QueueUrl=self._failure_queue_url, MessageBody=json.dumps(record))

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Worker:
    """A daemon thread repeating `step` until stopped."""

    def __init__(self, name: str, step: Callable[[], None], idle_seconds: float) -> None:
        self._step = step
        self._idle = idle_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                logger.exception("%s failed; going on", self._thread.name)
            self._stop.wait(self._idle)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def s3_notification_pump(
    aws: EmbeddedAws, queue_url: str, invoker: AsyncInvoker, faults: AwsFaultPlan, injected: Counter[str]
) -> Callable[[], None]:
    """S3 → function: moto delivers the bucket's notifications to a queue; each becomes an async invocation.

    The fault plan may deliver a notification twice, or hold each back a random while so they arrive out of order;
    `injected` counts the duplicates.
    """
    sqs = aws.client("sqs")
    decider = SeededDecider(faults.seed)

    def deliver(event: dict[str, Any]) -> None:
        delay = decider.uniform(faults.s3_event_max_delay_seconds)
        if delay:
            threading.Timer(delay, invoker.submit, args=(event,)).start()
        else:
            invoker.submit(event)

    def step() -> None:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = batch.get("Messages", [])
        for message in messages:
            event = json.loads(message["Body"])
            # S3 sends queue destinations an s3:TestEvent when notifications are configured; Lambda never sees one.
            if "Records" in event:
                deliver(event)
                if decider.should(faults.s3_duplicate_event_rate):
                    injected["s3-duplicate"] += 1
                    deliver(event)
        if messages:  # one request for the batch: moto's SQS walks the whole queue for each
            entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)]
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)

    return step


class StreamPump:
    """DynamoDB stream → function, with the event source mapping's filters, batching, retries and destination.

    Like Lambda with a `ParallelizationFactor`, up to that many batches run at once, and the records of one item (one
    partition key) are delivered in order, one batch at a time; a batch holds records of one item only.
    """

    def __init__(
        self,
        aws: AwsClients,
        stream_arn: str,
        pool: FunctionPool,
        *,
        batch_size: int,
        max_retries: int,
        filters: list[dict[str, Any]],
        failure_queue_url: str | None,
        report_item_failures: bool,
        parallelization: int = 1,
    ) -> None:
        self._streams = aws.client("dynamodbstreams")
        self._aws = aws
        self._stream_arn = stream_arn
        self._pool = pool
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._filters = filters
        self._failure_queue_url = failure_queue_url
        self._report_item_failures = report_item_failures
        self._iterators: dict[str, str | None] = {}
        self._backlog: dict[str, collections.deque[dict[str, Any]]] = {}  # partition key -> its records, in order
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=parallelization, thread_name_prefix=f"stream-{pool.runtime.name}"
        )
        self.delivered = 0

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._in_flight) or any(self._backlog.values())

    def _read_new_records(self) -> None:
        description = self._streams.describe_stream(StreamArn=self._stream_arn)["StreamDescription"]
        for shard in description["Shards"]:
            shard_id = shard["ShardId"]
            if shard_id not in self._iterators:
                self._iterators[shard_id] = self._streams.get_shard_iterator(
                    StreamArn=self._stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
            iterator = self._iterators[shard_id]
            if iterator is None:
                continue
            page = self._streams.get_records(ShardIterator=iterator, Limit=1000)
            self._iterators[shard_id] = page.get("NextShardIterator")
            for record in page["Records"]:
                lambda_record = self._as_lambda_record(record)
                if not self._filters or matches_any(self._filters, lambda_record):
                    item = json.dumps(lambda_record["dynamodb"].get("Keys", {}), sort_keys=True)
                    with self._lock:
                        self._backlog.setdefault(item, collections.deque()).append(lambda_record)

    def _as_lambda_record(self, record: dict[str, Any]) -> dict[str, Any]:
        record = json.loads(json.dumps(record, default=str))
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        if isinstance(created, str):  # Lambda delivers epoch seconds
            record["dynamodb"]["ApproximateCreationDateTime"] = datetime.fromisoformat(created).timestamp()
        record["eventSourceARN"] = self._stream_arn
        return record

    def step(self) -> None:
        self._read_new_records()
        with self._lock:
            ready = [item for item, records in self._backlog.items() if records and item not in self._in_flight]
            self._in_flight.update(ready)
        for item in ready:
            self._executor.submit(self._drain, item)

    def _drain(self, item: str) -> None:
        """Deliver one item's records in order, a batch at a time, until none is left."""
        try:
            while True:
                with self._lock:
                    records = self._backlog[item]
                    batch = list(itertools.islice(records, self._batch_size))
                if not batch:
                    return
                done = self._deliver(batch)
                with self._lock:
                    for _ in range(done):
                        records.popleft()
        except Exception:
            logger.exception("%s: delivering stream records failed", self._pool.runtime.name)
        finally:
            with self._lock:
                self._in_flight.discard(item)

    def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, batch: list[dict[str, Any]]) -> int:
        """Deliver a batch with retries; returns how many records are done with (processed or sent away)."""
        for attempt in range(self._max_retries + 1):
            try:
                response = self._pool.invoke({"Records": batch})
            except InvocationError as error:
                logger.warning(
                    "%s failed on a stream batch (attempt %d): %s", self._pool.runtime.name, attempt + 1, error
                )
                time.sleep(min(2**attempt, 5))
                continue
            failures = (response or {}).get("batchItemFailures", []) if self._report_item_failures else []
            if not failures:
                self.delivered += len(batch)
                return len(batch)
            # Lambda retries from the first failed record on; the records before it are done.
            first_failed = min(
                i
                for i, r in enumerate(batch)
                for f in failures
                if f["itemIdentifier"] == r["dynamodb"]["SequenceNumber"]
            )
            if first_failed > 0:
                self.delivered += first_failed
                return first_failed
            time.sleep(min(2**attempt, 5))
        self._send_to_destination(batch)
        return len(batch)

    def _send_to_destination(self, batch: list[dict[str, Any]]) -> None:
        logger.error("%s gave up on %d stream records", self._pool.runtime.name, len(batch))
        if self._failure_queue_url:
            body = {
                "requestContext": {"condition": "RetryAttemptsExhausted", "functionArn": self._pool.runtime.name},
                "DDBStreamBatchInfo": {
                    "streamArn": self._stream_arn,
                    "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
                    "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"],
                    "batchSize": len(batch),
                },
            }
            self._aws.client("sqs").send_message(QueueUrl=self._failure_queue_url, MessageBody=json.dumps(body))


class SqsPoller:
    """SQS queue → function: Lambda's event source mapping for a queue (`Events: ...: Type: SQS`).

    Like Lambda, it receives up to `batch_size` messages, invokes the function synchronously with them as one SQS
    event, then deletes the messages the function is done with: all of them when it returns, except (with
    ReportBatchItemFailures) those its `batchItemFailures` lists; none when it fails. A message not deleted comes
    back once the queue's visibility timeout is over; after the RedrivePolicy's maxReceiveCount receives, SQS (moto)
    moves it to the dead-letter queue. Delayed messages are SQS's business too: they are not received before their
    delay. Messages that match none of the mapping's filters are deleted without an invocation, as Lambda does.
    Up to `concurrency` batches (the function's execution environments, or ScalingConfig.MaximumConcurrency if lower)
    run at once.
    """

    def __init__(
        self,
        aws: AwsClients,
        queue_arn: str,
        queue_url: str,
        pool: FunctionPool,
        *,
        batch_size: int = 10,
        batching_window_seconds: float = 0.0,
        report_item_failures: bool = False,
        filters: list[dict[str, Any]] | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        self._sqs = aws.client("sqs")
        self._region = aws.region
        self.queue_arn = queue_arn
        self.queue_url = queue_url
        self._pool = pool
        self._batch_size = batch_size
        self._window = batching_window_seconds
        self._report_item_failures = report_item_failures
        self._filters = filters or []
        self._check_mapping()
        self._concurrency = max(1, min(pool.workers, max_concurrency or pool.workers))
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix=f"sqs-{pool.runtime.name}"
        )
        self._in_flight = 0  # batches being received or delivered
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.delivered = 0  # messages the function was done with, and so deleted
        self.filtered_out = 0  # messages deleted unseen: they matched none of the filters

    def _check_mapping(self) -> None:
        """What CreateEventSourceMapping refuses, refused here too: the stack would not deploy."""
        attributes = self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])["Attributes"]
        fifo = attributes.get("FifoQueue") == "true"
        name = self._pool.runtime.name
        if not 1 <= self._batch_size <= (10 if fifo else 10_000):
            raise ValueError(f"{name}: BatchSize {self._batch_size} is out of range for {self.queue_arn}")
        if not 0 <= self._window <= 300 or (self._batch_size > 10 and self._window < 1):
            raise ValueError(
                f"{name}: MaximumBatchingWindowInSeconds {self._window} is invalid for BatchSize {self._batch_size} "
                "(0 to 300, at least 1 when BatchSize is over 10)"
            )
        visibility = int(attributes["VisibilityTimeout"])
        if visibility < self._pool.runtime.timeout_seconds:
            raise ValueError(
                f"{name}: queue visibility timeout ({visibility} s) is less than the function timeout "
                f"({self._pool.runtime.timeout_seconds} s): Lambda refuses this event source mapping"
            )

    @property
    def busy(self) -> bool:
        """A batch is being received or delivered, or messages are ready to be (delayed ones are not ready)."""
        with self._lock:
            if self._in_flight:
                return True
        ready = self._sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(ready["Attributes"]["ApproximateNumberOfMessages"]) > 0

    def step(self) -> None:
        """Start batches while the queue has messages and fewer than `concurrency` batches are running."""
        while not self._stopping.is_set():
            with self._lock:
                if self._in_flight >= self._concurrency:
                    return
                self._in_flight += 1  # a batch in the making counts: its messages are invisible already
            try:
                messages = self._receive_batch()
                if messages:
                    self._executor.submit(self._run, messages)
            except BaseException:
                self._finished()
                raise
            if not messages:
                self._finished()
                return

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _receive_batch(self) -> list[dict[str, Any]]:
        """Up to `batch_size` messages; with a batching window, waits up to the window for a full batch."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + self._window
        while len(messages) < self._batch_size:
            page = self._sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(10, self._batch_size - len(messages)),
                WaitTimeSeconds=0,
                AttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = page.get("Messages", [])
            messages.extend(received)
            if received:
                continue
            remaining = deadline - time.monotonic()
            if not messages or remaining <= 0 or self._stopping.wait(min(0.2, remaining)):
                break
        return messages

    def _run(self, messages: list[dict[str, Any]]) -> None:
        try:
            self._deliver([sqs_record(m, self.queue_arn, self._region) for m in messages])
        except Exception:
            logger.exception("%s: delivering SQS messages failed", self._pool.runtime.name)
        finally:
            self._finished()

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        if self._filters:
            unmatched = [r for r in records if not matches_any(self._filters, filterable_record(r))]
            if unmatched:
                self._delete(unmatched)
                self.filtered_out += len(unmatched)
                dropped = {r["messageId"] for r in unmatched}
                records = [r for r in records if r["messageId"] not in dropped]
            if not records:
                return
        try:
            response = self._pool.invoke({"Records": records})
        except InvocationError as error:
            logger.warning(
                "%s failed on a batch of %d SQS messages; they come back after the visibility timeout: %s",
                self._pool.runtime.name,
                len(records),
                error,
            )
            return
        failed = self._failed_message_ids(records, response)
        if failed is None:
            return
        done = [r for r in records if r["messageId"] not in failed]
        self._delete(done)
        self.delivered += len(done)

    def _failed_message_ids(self, records: list[dict[str, Any]], response: Any) -> set[str] | None:
        """The messages the function reports as failed; None when the response fails the whole batch.

        As Lambda reads a partial batch response: no response, an empty one, or an empty or null `batchItemFailures`
        is a full success; an item without an `itemIdentifier`, with an empty one or one that is not a message of
        the batch (or a response that is not an object) fails the whole batch.
        """
        if not self._report_item_failures or not response:
            return set()
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if isinstance(response, dict) and not failures:
            return set()
        ids = {r["messageId"] for r in records}
        if not isinstance(failures, list) or not all(
            isinstance(f, dict) and isinstance(f.get("itemIdentifier"), str) and f["itemIdentifier"] in ids
            for f in failures
        ):
            logger.warning(
                "%s returned an invalid partial batch response; the whole batch failed: %r",
                self._pool.runtime.name,
                response,
            )
            return None
        return {f["itemIdentifier"] for f in failures}

    def _delete(self, records: list[dict[str, Any]]) -> None:
        for start in range(0, len(records), 10):
            chunk = records[start : start + 10]
            entries = [{"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(chunk)]
            result = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in result.get("Failed", []):
                logger.warning("%s: could not delete an SQS message: %s", self._pool.runtime.name, failure)

    def stop(self) -> None:
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A received SQS message as a record of the event Lambda sends for it."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _lambda_message_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _lambda_message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    """A message attribute as Lambda delivers it: camelCase keys, binary values base64-encoded, both lists present."""

    def encoded(data: bytes | str) -> str:
        return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()

    attribute: dict[str, Any] = {}
    if "StringValue" in value:
        attribute["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        attribute["binaryValue"] = encoded(value["BinaryValue"])
    attribute["stringListValues"] = list(value.get("StringListValues", []))
    attribute["binaryListValues"] = [encoded(item) for item in value.get("BinaryListValues", [])]
    attribute["dataType"] = value["DataType"]
    return attribute


def scheduled_event(rule_name: str, region: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:123456789012:rule/{rule_name}"],
        "detail": {},
    }


class ApiRoute:
    def __init__(self, stage: str, path_template: str, method: str, pool: FunctionPool) -> None:
        self.stage = stage
        self.resource = path_template
        self.method = method.upper()
        self.pool = pool
        pattern = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(path_template))
        self._regex = re.compile(f"^/{re.escape(stage)}{pattern}$")

    def match(self, method: str, path: str) -> dict[str, str] | None:
        found = self._regex.match(path)
        return found.groupdict() if found and method.upper() == self.method else None


class _GatewayServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            # The caller stopped waiting (a webhook sender's timeout): its retry is its business, as with API Gateway.
            logger.debug("%s went away before its answer", client_address)
            return
        logger.exception("local API gateway failed on a request from %s", client_address)


class ApiGateway:
    """API Gateway (REST, Lambda proxy integration) on 127.0.0.1: requests in, proxy events to the function."""

    def __init__(self, routes: list[ApiRoute]) -> None:
        self.routes = routes
        self._server = _GatewayServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-gateway", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                logger.debug(format, *args)

            def _serve(self) -> None:
                split = urlsplit(self.path)
                for route in gateway.routes:
                    path_parameters = route.match(self.command, split.path)
                    if path_parameters is not None:
                        break
                else:
                    self._reply(
                        403 if split.path.startswith("/") else 404, {}, b'{"message":"Missing Authentication Token"}'
                    )
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                event = proxy_event(
                    route,
                    self.command,
                    split.path,
                    split.query,
                    dict(self.headers),
                    body,
                    path_parameters,
                    self.client_address[0],
                )
                try:
                    response = route.pool.invoke(event)
                except InvocationError:
                    self._reply(502, {}, b'{"message": "Internal server error"}')
                    return
                payload = response.get("body") or ""
                raw = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
                self._reply(int(response.get("statusCode", 200)), response.get("headers") or {}, raw)

            def _reply(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        return Handler


def proxy_event(
    route: ApiRoute,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    path_parameters: dict[str, str],
    source_ip: str,
) -> dict[str, Any]:
    """The event API Gateway's Lambda proxy integration sends for a REST API request."""
    multi_query = parse_qs(query, keep_blank_values=True)
    try:
        text, is_base64 = body.decode(), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    resource_path = path.removeprefix(f"/{route.stage}")
    request_id = str(uuid.uuid4())
    return {
        "resource": route.resource,
        "path": resource_path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": route.resource,
            "httpMethod": method,
            "path": path,
            "stage": route.stage,
            "requestId": request_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": source_ip, "userAgent": headers.get("User-Agent", "")},
            "protocol": "HTTP/1.1",
            "accountId": "123456789012",
            "apiId": "local",
        },
        "body": text if body else None,
        "isBase64Encoded": is_base64,
    }
