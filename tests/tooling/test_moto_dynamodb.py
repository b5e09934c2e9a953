"""The two behaviours of the real DynamoDB that `faithful_dynamodb_writes` restores in moto."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any
from unittest.mock import patch

import pytest
from botocore.exceptions import ClientError

from avatar_local.twin import moto_dynamodb
from avatar_local.twin.aws import EmbeddedAws

TABLE = "stream-test"


@pytest.fixture
def aws() -> Iterator[EmbeddedAws]:
    """moto in server mode, as the local stack runs it (with `faithful_dynamodb_writes`)."""
    with EmbeddedAws("us-east-1") as embedded:
        yield embedded


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


# ---------------------------------------------------------------------------------------------- key sizes

KEYED = "key-size-test"
INDEX = "by-group"
# DynamoDB's own words (its message has no space before 2048).
HASH_KEY_TOO_LONG = (
    "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of2048 bytes"
)
RANGE_KEY_TOO_LONG = (
    "One or more parameter values were invalid: Aggregated size of all range keys has exceeded the size limit of 1024 "
    "bytes"
)
BIG_HASH = {"S": "h" * 2049}
BIG_RANGE = {"S": "r" * 1025}
SET_X: dict[str, Any] = {"UpdateExpression": "SET x = :x", "ExpressionAttributeValues": {":x": {"S": "1"}}}


@pytest.fixture
def keyed(aws: EmbeddedAws) -> Iterator[Any]:
    """A table with a sort key and a global secondary index (hash and range), as the task table has."""
    client = aws.client("dynamodb")
    client.create_table(
        TableName=KEYED,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "group", "place")],
        GlobalSecondaryIndexes=[
            {
                "IndexName": INDEX,
                "KeySchema": [
                    {"AttributeName": "group", "KeyType": "HASH"},
                    {"AttributeName": "place", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    yield client
    client.delete_table(TableName=KEYED)


def key(pk: dict[str, str] | None = None, sk: dict[str, str] | None = None) -> dict[str, Any]:
    return {"pk": pk or {"S": "a"}, "sk": sk or {"S": "b"}}


def _condition_check(k: dict[str, Any]) -> dict[str, Any]:
    return {"ConditionCheck": {"TableName": KEYED, "Key": k, "ConditionExpression": "attribute_exists(pk)"}}


# (what the request is, how to send it with a key, whether moto refused it on its own)
KEYED_REQUESTS: list[tuple[str, Callable[[Any, dict[str, Any]], Any], bool]] = [
    ("GetItem", lambda c, k: c.get_item(TableName=KEYED, Key=k), False),
    ("DeleteItem", lambda c, k: c.delete_item(TableName=KEYED, Key=k), False),
    (
        "UpdateItem on an item that must exist",
        lambda c, k: c.update_item(TableName=KEYED, Key=k, ConditionExpression="attribute_exists(pk)", **SET_X),
        False,
    ),
    ("BatchGetItem", lambda c, k: c.batch_get_item(RequestItems={KEYED: {"Keys": [k]}}), False),
    (
        "TransactGetItems",
        lambda c, k: c.transact_get_items(TransactItems=[{"Get": {"TableName": KEYED, "Key": k}}]),
        False,
    ),
    (
        "TransactWriteItems ConditionCheck",
        lambda c, k: c.transact_write_items(TransactItems=[_condition_check(k)]),
        False,
    ),
    (
        "TransactWriteItems Delete",
        lambda c, k: c.transact_write_items(TransactItems=[{"Delete": {"TableName": KEYED, "Key": k}}]),
        False,
    ),
    # moto already refuses these: pinned here
    ("PutItem", lambda c, k: c.put_item(TableName=KEYED, Item=k), True),
    ("UpdateItem creating the item", lambda c, k: c.update_item(TableName=KEYED, Key=k, **SET_X), True),
    (
        "BatchWriteItem",
        lambda c, k: c.batch_write_item(RequestItems={KEYED: [{"PutRequest": {"Item": k}}]}),
        True,
    ),
    (
        "TransactWriteItems Put",
        lambda c, k: c.transact_write_items(TransactItems=[{"Put": {"TableName": KEYED, "Item": k}}]),
        True,
    ),
    (
        "TransactWriteItems Update",
        lambda c, k: c.transact_write_items(TransactItems=[{"Update": {"TableName": KEYED, "Key": k, **SET_X}}]),
        True,
    ),
]


@pytest.mark.parametrize(("request_name", "send", "moto_refused"), KEYED_REQUESTS, ids=[r[0] for r in KEYED_REQUESTS])
@pytest.mark.parametrize(
    ("oversize", "message"),
    [(key(pk=BIG_HASH), HASH_KEY_TOO_LONG), (key(sk=BIG_RANGE), RANGE_KEY_TOO_LONG)],
    ids=["partition key of 2049 bytes", "sort key of 1025 bytes"],
)
def test_a_request_naming_a_key_over_dynamodbs_limit_is_refused_as_dynamodb_refuses_it(
    keyed: Any,
    request_name: str,
    send: Callable[[Any, dict[str, Any]], Any],
    moto_refused: bool,
    oversize: dict[str, Any],
    message: str,
) -> None:
    # Given a key whose partition key is over 2048 bytes or whose sort key is over 1024
    # When a request names it
    with pytest.raises(ClientError) as caught:
        send(keyed, oversize)
    # Then DynamoDB's ValidationException comes back, whatever the request
    error = caught.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ValidationException", message)
    # And nothing was written
    assert keyed.scan(TableName=KEYED)["Items"] == []


@pytest.mark.parametrize("index", [None, INDEX])
def test_a_query_for_a_partition_key_over_2048_bytes_is_refused(keyed: Any, index: str | None) -> None:
    # Given a partition key value over 2048 bytes, of the table or of its index
    name = "group" if index else "pk"
    by_index = {"IndexName": index} if index else {}
    # When a query asks for it
    with pytest.raises(ClientError) as caught:
        keyed.query(
            TableName=KEYED,
            KeyConditionExpression="#k = :k",
            ExpressionAttributeNames={"#k": name},
            ExpressionAttributeValues={":k": BIG_HASH},
            **by_index,
        )
    # Then DynamoDB's ValidationException comes back
    error = caught.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ValidationException", HASH_KEY_TOO_LONG)


def test_keys_at_the_limits_counted_in_utf8_bytes_are_accepted_and_one_byte_more_is_not(keyed: Any) -> None:
    # Given keys of exactly 2048 and 1024 bytes, written in two-byte characters
    at_limit = key(pk={"S": "é" * 1024}, sk={"S": "é" * 512})
    # When they are written and read, Then DynamoDB takes them
    keyed.put_item(TableName=KEYED, Item=at_limit)
    assert keyed.get_item(TableName=KEYED, Key=at_limit)["Item"]["pk"] == at_limit["pk"]
    # And a key of 1024 such characters and one more byte is refused, though it has far fewer than 2048 characters
    with pytest.raises(ClientError, match="Size of hashkey"):
        keyed.get_item(TableName=KEYED, Key=key(pk={"S": "é" * 1024 + "x"}))


def _index_key_too_long(attribute: str, size: int, limit: int) -> str:
    return (
        f"One or more parameter values were invalid: Size limit exceeded for Index Key {attribute} "
        f"Actual Size: {size} bytes Max Size: {limit} bytes IndexName: {INDEX}"
    )


INDEX_WRITES: list[tuple[str, Callable[[Any, dict[str, Any]], Any]]] = [
    ("PutItem", lambda c, attrs: c.put_item(TableName=KEYED, Item={**key(), "place": {"S": "p"}, **attrs})),
    (
        "UpdateItem",
        lambda c, attrs: c.update_item(
            TableName=KEYED,
            Key=key(),
            UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in attrs),
            ExpressionAttributeNames={f"#{name}": name for name in attrs},
            ExpressionAttributeValues={f":{name}": value for name, value in attrs.items()},
        ),
    ),
    (
        "TransactWriteItems Update",
        lambda c, attrs: c.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": KEYED,
                        "Key": key(),
                        "UpdateExpression": "SET " + ", ".join(f"#{name} = :{name}" for name in attrs),
                        "ExpressionAttributeNames": {f"#{name}": name for name in attrs},
                        "ExpressionAttributeValues": {f":{name}": value for name, value in attrs.items()},
                    }
                }
            ]
        ),
    ),
]


@pytest.mark.parametrize(("request_name", "write"), INDEX_WRITES, ids=[w[0] for w in INDEX_WRITES])
@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"group": BIG_HASH}, _index_key_too_long("group", 2049, 2048)),
        ({"group": {"S": "g"}, "place": BIG_RANGE}, _index_key_too_long("place", 1025, 1024)),
    ],
    ids=["index partition key of 2049 bytes", "index sort key of 1025 bytes"],
)
def test_a_write_giving_an_index_key_over_its_limit_is_refused_and_changes_nothing(
    aws: EmbeddedAws,
    keyed: Any,
    request_name: str,
    write: Callable[[Any, dict[str, Any]], Any],
    attrs: dict[str, Any],
    message: str,
) -> None:
    # Given an item, and a stream reader positioned after it
    keyed.put_item(TableName=KEYED, Item={**key(), "n": {"N": "1"}})
    streams = aws.client("dynamodbstreams")
    arn = keyed.describe_table(TableName=KEYED)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]
    # When a write would give the item a global secondary index key over DynamoDB's limit
    with pytest.raises(ClientError) as caught:
        write(keyed, attrs)
    # Then DynamoDB's ValidationException comes back
    error = caught.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("ValidationException", message)
    # And the item is as it was, and the stream has no record of the refused write
    assert keyed.get_item(TableName=KEYED, Key=key())["Item"] == {**key(), "n": {"N": "1"}}
    assert streams.get_records(ShardIterator=iterator)["Records"] == []
