"""The embedded DynamoDB under concurrent load: reads never fail because another thread writes the same table.

moto's server answers requests on several threads and its DynamoDB backend has no locking, so a Query or Scan
iterating a table's items while another request adds or removes one fails with HTTP 500 ("dictionary changed size
during iteration"). The real service never answers 500 for that; with the SDK's retries switched off, any 500 shows.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.responses import DynamoHandler
from moto.dynamodbstreams.models import DynamoDBStreamsBackend

from avatar_local.twin.aws import LOCAL_CREDENTIALS, EmbeddedAws
from avatar_local.twin.moto_dynamodb import faithful_dynamodb_writes

TABLE = "concurrency-test"
INDEX = "by-state"
SEEDED = 3000
LOAD_SECONDS = 3.0
WRITERS = 4
READERS = 4  # two scan the GSI, one queries it, one scans the table
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every 0.1 ms (not 5), so a write lands inside a read's iteration within seconds; more often
    still (as `busy_threads` does) slows every request down more than it adds races."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(previous)


@pytest.fixture
def aws() -> Iterator[EmbeddedAws]:
    """moto in server mode, as the local stack runs it (with `faithful_dynamodb_writes`)."""
    with EmbeddedAws("us-east-1") as embedded:
        yield embedded


def client(aws: EmbeddedAws, service: str = "dynamodb") -> Any:
    return boto3.client(
        service, endpoint_url=aws.endpoint_url, region_name=aws.region, config=NO_RETRIES, **LOCAL_CREDENTIALS
    )


@pytest.fixture
def dynamodb(aws: EmbeddedAws) -> Iterator[Any]:
    dynamodb = client(aws)
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "state", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": INDEX,
                "KeySchema": [{"AttributeName": "state", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    # Seeded in moto's backend directly (the server runs in this process): thousands of PutItem calls would take
    # longer than the test; a large table makes every read iterate its items for longer.
    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][aws.region]
    for number in range(SEEDED):
        backend.put_item(TABLE, {"pk": {"S": f"item-{number}"}, "state": {"S": state_of(number)}})
    yield dynamodb
    dynamodb.delete_table(TableName=TABLE)  # moto's state outlives the server: the next test starts afresh


def state_of(number: int) -> str:
    """Most items are "waiting"; a few are "rare", so a Query of the GSI for them iterates much and returns little."""
    return "rare" if number % 100 == 0 else "waiting"


class Load:
    """Threads each repeating one kind of request until the deadline; every failed request is kept."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.calls = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def repeat(self, request: Callable[[int], None]) -> None:
        number = 0
        while time.monotonic() < self.deadline:
            number += 1
            try:
                request(number)
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                self._failed(f"{status} {error.response.get('Error', {}).get('Code')}: {error}")
            except BotoCoreError as error:
                self._failed(f"{type(error).__name__}: {error}")
            with self._lock:
                self.calls += 1

    def _failed(self, failure: str) -> None:
        with self._lock:
            self.failures.append(failure)

    def run(self, requests: list[Callable[[int], None]]) -> None:
        threads = [threading.Thread(target=self.repeat, args=(request,)) for request in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def writer(dynamodb: Any, offset: int) -> Callable[[int], None]:
    """Puts an item, updates it (moto changes the stored item in place), deletes it, then creates another with an
    UpdateItem: each write but the in-place update adds an item to the table or removes one."""

    def write(number: int) -> None:
        cycle, step = divmod(number, 4)
        key = {"pk": {"S": f"written-{offset}-{cycle}"}}
        if step == 0:
            dynamodb.put_item(TableName=TABLE, Item={**key, "state": {"S": state_of(number)}})
        elif step == 1:
            dynamodb.update_item(
                TableName=TABLE,
                Key=key,
                UpdateExpression="SET extra = :n",
                ExpressionAttributeValues={":n": {"N": str(number)}},
            )
        elif step == 2:
            dynamodb.delete_item(TableName=TABLE, Key=key)
        else:
            dynamodb.update_item(
                TableName=TABLE,
                Key={"pk": {"S": f"upserted-{offset}-{cycle}"}},
                UpdateExpression="SET #state = :state",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":state": {"S": state_of(number)}},
            )

    return write


def reader(dynamodb: Any, kind: int) -> Callable[[int], None]:
    """Scans the GSI, queries it or scans the table: moto iterates every item of the table for each (a Scan of the
    GSI for longest: it looks at each item's attributes as it goes)."""

    def read(_: int) -> None:
        if kind in (0, 1):
            dynamodb.scan(TableName=TABLE, IndexName=INDEX, Limit=10)
        elif kind == 2:
            dynamodb.query(
                TableName=TABLE,
                IndexName=INDEX,
                KeyConditionExpression="#state = :state",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":state": {"S": "rare"}},
            )
        else:
            dynamodb.scan(TableName=TABLE, Limit=10)

    return read


def stream_reader(aws: EmbeddedAws, dynamodb: Any) -> Callable[[int], None]:
    """Lists and reads the table's stream, as a stream poller does, while the writers append records to it."""
    streams = client(aws, "dynamodbstreams")
    arn = dynamodb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = [streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]]

    def read(_: int) -> None:
        streams.list_streams(TableName=TABLE)
        iterator[0] = streams.get_records(ShardIterator=iterator[0], Limit=100)["NextShardIterator"]

    return read


@pytest.mark.usefixtures("frequent_thread_switches")
def test_reads_never_fail_while_other_threads_write_the_same_table(aws: EmbeddedAws, dynamodb: Any) -> None:
    # Given a table with a GSI, and clients that never retry (a 500 would otherwise be retried away)
    writers = [writer(client(aws), offset) for offset in range(WRITERS)]
    readers = [reader(client(aws), kind) for kind in range(READERS)]
    # When writers and readers (of the index, the table and its stream) run at once for a few seconds
    load = Load(LOAD_SECONDS)
    load.run([*writers, *readers, stream_reader(aws, dynamodb)])
    # Then no request failed
    server_errors = [failure for failure in load.failures if failure.startswith("5")]
    assert not server_errors, f"{len(server_errors)} of {load.calls} requests failed, e.g. {server_errors[:3]}"
    assert not load.failures, f"{len(load.failures)} of {load.calls} requests failed, e.g. {load.failures[:3]}"
    assert load.calls > 50  # enough requests ran at once to race


def test_moto_handles_requests_as_it_does_once_the_patch_is_undone() -> None:
    # Given moto's DynamoDB request handler and DynamoDB Streams backend as moto defines them
    call_action, get_records = DynamoHandler.call_action, DynamoDBStreamsBackend.get_records
    # When the patch is applied, then undone
    with faithful_dynamodb_writes():
        assert (DynamoHandler.call_action, DynamoDBStreamsBackend.get_records) != (call_action, get_records)
    # Then both are moto's own again
    assert DynamoHandler.call_action is call_action
    assert DynamoDBStreamsBackend.get_records is get_records
