"""Lambda events for tests, built from the samples in events/ so they keep the shape AWS sends."""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from boto3.dynamodb.types import TypeSerializer

EVENTS = Path(__file__).resolve().parents[2] / "events"


def sample(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


_sequencers = itertools.count(0x0066A1B2C3D4E600)


def s3_created(bucket: str, key: str, etag: str, size: int) -> dict[str, Any]:
    """An S3 ObjectCreated event for an object as it is stored: the key URL-encoded and a new, increasing
    sequencer per write, like S3 does."""
    event = sample("s3_put_image.json")
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"].update(
        {"key": quote_plus(key, safe="/"), "eTag": etag.strip('"'), "size": size, "sequencer": f"{next(_sequencers):X}"}
    )
    return event


def signed_headers(body: bytes, secret: str, webhook_id: str, timestamp: int) -> dict[str, str]:
    key = secret.removeprefix("whsec_").encode()
    signature = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v3,{signature}",
    }


def api_post(path_provider: str, query: dict[str, str], body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """API Gateway's proxy event for ``POST /webhooks/<path_provider>?<query>``."""
    event = sample("webhook_wavespeed_completed.json")
    event = copy.deepcopy(event)
    event["path"] = f"/webhooks/{path_provider}"
    event["pathParameters"] = {"provider": path_provider}
    event["queryStringParameters"] = dict(query) or None
    event["multiValueQueryStringParameters"] = {name: [value] for name, value in query.items()} or None
    event["headers"] = headers
    event["multiValueHeaders"] = {k: [v] for k, v in headers.items()}
    event["body"] = body.decode()
    event["isBase64Encoded"] = False
    return event


def stream_event(new_item: dict[str, Any], old_item: dict[str, Any] | None = None) -> dict[str, Any]:
    """A DynamoDB stream event carrying a task item's change, as the table's stream would deliver it."""
    serializer = TypeSerializer()
    event = sample("finalize_output_ready.json")
    record = event["Records"][0]
    record["eventName"] = "MODIFY" if old_item else "INSERT"
    record["dynamodb"]["Keys"] = {"pk": serializer.serialize(new_item["pk"])}
    record["dynamodb"]["NewImage"] = {k: serializer.serialize(v) for k, v in new_item.items()}
    if old_item:
        record["dynamodb"]["OldImage"] = {k: serializer.serialize(v) for k, v in old_item.items()}
    else:
        record["dynamodb"].pop("OldImage", None)
    return event


def lambda_stream_record(record: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """A record as DynamoDB Streams' GetRecords returns it, in the shape Lambda hands a function: plain JSON, the
    creation time in epoch seconds, and the stream it came from."""
    record = json.loads(json.dumps(record, default=str))
    created = record["dynamodb"].get("ApproximateCreationDateTime")
    if isinstance(created, str):
        record["dynamodb"]["ApproximateCreationDateTime"] = datetime.fromisoformat(created).timestamp()
    record["eventSourceARN"] = stream_arn
    return record


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str = "us-east-1") -> dict[str, Any]:
    """The event Lambda's SQS event source hands a function for messages it received (as ReceiveMessage returns
    them, with all attributes)."""
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": dict(message.get("Attributes", {})),
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "binaryValue": value.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value["DataType"],
                    }
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for message in messages
        ]
    }


@dataclass
class FakeLambdaContext:
    function_name: str = "test-function"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 60_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
