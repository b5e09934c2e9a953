"""The two behaviours of the real DynamoDB that `faithful_dynamodb_writes` restores in moto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from avatar_local.aws import EmbeddedAws

TABLE = "stream-test"


@pytest.fixture
def aws() -> Iterator[EmbeddedAws]:
    """moto in server mode, as the local stack runs it (with `faithful_dynamodb_writes`)."""
    embedded = EmbeddedAws("us-east-1")
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def dynamodb(aws: EmbeddedAws) -> Any:
    client = aws.client("dynamodb")
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return client


def stream_reader(aws: EmbeddedAws, dynamodb: Any) -> tuple[Any, str]:
    streams = aws.client("dynamodbstreams")
    arn = dynamodb.describe_table(TableName=TABLE)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    return streams, iterator


def test_a_cancelled_transaction_leaves_open_stream_readers_reading_and_adds_no_records(
    aws: EmbeddedAws, dynamodb: Any
) -> None:
    # Given an item, and a stream reader positioned after it
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "existing"}})
    streams, iterator = stream_reader(aws, dynamodb)
    # When a transaction writes one item and is then cancelled by a failed condition on another
    with pytest.raises(ClientError, match="TransactionCanceled"):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "rolled-back"}}}},
                {
                    "Put": {
                        "TableName": TABLE,
                        "Item": {"pk": {"S": "existing"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
    # and a later write succeeds
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "later"}})
    # Then the reader sees the later write, and nothing of the cancelled transaction
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [record["dynamodb"]["Keys"]["pk"]["S"] for record in records] == ["later"]
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "rolled-back"}})
