"""The two behaviours of the real DynamoDB that `faithful_dynamodb_writes` restores in moto."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest
from botocore.exceptions import ClientError

from avatar_local import moto_dynamodb
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
def dynamodb(aws: EmbeddedAws) -> Iterator[Any]:
    client = aws.client("dynamodb")
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield client
    client.delete_table(TableName=TABLE)  # moto's state outlives the server: the next test starts afresh


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


def test_a_transaction_failing_midway_puts_back_what_it_wrote_and_drops_its_records(
    aws: EmbeddedAws, dynamodb: Any
) -> None:
    # Given an item, and a stream reader positioned after it
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "counter"}, "n": {"N": "1"}})
    streams, iterator = stream_reader(aws, dynamodb)
    # When a transaction creates an item, then fails to update another (a number plus a string: refused only when
    # the update is applied, after every condition held)
    with pytest.raises(ClientError, match="Validation"):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "created"}}}},
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": {"pk": {"S": "counter"}},
                        "UpdateExpression": "SET n = n + :step",
                        "ExpressionAttributeValues": {":step": {"S": "one"}},
                    }
                },
            ]
        )
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "later"}})
    # Then the created item is gone again, the other is untouched, and the reader sees only the later write
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "created"}})
    assert dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "counter"}})["Item"]["n"] == {"N": "1"}
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [record["dynamodb"]["Keys"]["pk"]["S"] for record in records] == ["later"]


def test_a_transaction_reads_and_writes_only_the_items_it_names(aws: EmbeddedAws, dynamodb: Any) -> None:
    # Given a table with other items in it
    for number in range(50):
        dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": f"other-{number}"}})
    copied: list[str] = []
    original = copy.deepcopy

    def counting(value: Any, *args: Any) -> Any:
        copied.append(type(value).__name__)
        return original(value, *args)

    # When a transaction writes two items (counting what is deep-copied meanwhile)
    with patch.object(moto_dynamodb.copy, "deepcopy", counting):
        dynamodb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "a"}}}},
                {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "b"}}}},
            ]
        )
    # Then no table was copied (moto's own rollback copies every table a transaction names, every item in it)
    assert "Table" not in copied
    assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "b"}})
