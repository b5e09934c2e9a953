"""The AWS resources the pipeline needs, created in moto exactly as template.yaml declares them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from cfnlint.decode import decode_str

from support.callback_key import CALLBACK_KEY

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
BUCKET = "avatar-media-test"
TABLE = "avatar-tasks-test"
IDEMPOTENCY_TABLE = "avatar-idempotency-test"
WAKEUP_QUEUE = "admission-wakeups-test"
SECRET_ID = "avatar-wavespeed-test"
WEBHOOK_SECRET_ID = "avatar-wavespeed-webhook-test"
WEBHOOK_SECRET = "whsec_test_events_secret"
CALLBACK_KEY_SECRET_ID = "avatar-callback-key-test"
API_KEY = "test-api-key"
WAVESPEED_BASE_URL = "https://api.wavespeed.test"
WEBHOOK_BASE_URL = "https://hooks.example.test/v1"
COMETAPI_SECRET_ID = "avatar-cometapi-test"
COMETAPI_API_KEY = "test-cometapi-key"
COMETAPI_BASE_URL = "https://api.cometapi.test"


# The secrets each function's work needs, by the variable that names it: the providers' API keys to submit and poll,
# WaveSpeed's webhook secret to check its signatures (CometAPI's key to confirm its unsigned callbacks), the callback
# key to make (dispatch, poller) or check (webhook) callback tokens, the link signer's key to presign long-lived links.
# fal's webhooks are checked with fal's public keys: the webhook holds no fal secret.
SECRET_IDS: dict[str, dict[str, str]] = {
    "SubmitFunction": {},
    "DispatchFunction": {
        "WAVESPEED_SECRET_ID": "WaveSpeedSecret",
        "COMETAPI_SECRET_ID": "CometApiSecret",
        "FAL_SECRET_ID": "FalSecret",
        "CALLBACK_KEY_SECRET_ID": "CallbackKeySecret",
        "LINK_SIGNER_SECRET_ID": "LinkSignerSecret",
    },
    "WebhookFunction": {
        "WAVESPEED_WEBHOOK_SECRET_ID": "WaveSpeedWebhookSecret",
        "COMETAPI_SECRET_ID": "CometApiSecret",
        "CALLBACK_KEY_SECRET_ID": "CallbackKeySecret",
    },
    "PollerFunction": {
        "WAVESPEED_SECRET_ID": "WaveSpeedSecret",
        "COMETAPI_SECRET_ID": "CometApiSecret",
        "FAL_SECRET_ID": "FalSecret",
        "CALLBACK_KEY_SECRET_ID": "CallbackKeySecret",
        "LINK_SIGNER_SECRET_ID": "LinkSignerSecret",
    },
    "FinalizeFunction": {"LINK_SIGNER_SECRET_ID": "LinkSignerSecret"},
    "EventsFunction": {},
}


def template() -> dict[str, Any]:
    decoded, problems = decode_str((ROOT / "template.yaml").read_text())
    assert not problems, problems
    return dict(decoded)


def table_definition(logical_id: str = "TaskTable") -> dict[str, Any]:
    """A table's key schema, indexes and stream, taken from template.yaml so tests and deployment agree."""
    props = template()["Resources"][logical_id]["Properties"]
    keep = ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes", "BillingMode")
    definition = {name: props[name] for name in keep if name in props}
    if "StreamSpecification" in props:
        # CloudFormation implies StreamEnabled from the view type; the DynamoDB API wants it said.
        definition["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    return definition


@dataclass
class Stack:
    bucket: str
    table: str
    topic_arn: str
    notifications_queue_url: str
    secret_id: str
    idempotency_table: str
    wakeup_queue_url: str
    webhook_secret_id: str = WEBHOOK_SECRET_ID

    def environment(self) -> dict[str, str]:
        return {
            "TASK_TABLE_NAME": self.table,
            "IDEMPOTENCY_TABLE_NAME": self.idempotency_table,
            "MEDIA_BUCKET": self.bucket,
            "TOPIC_ARN": self.topic_arn,
            "WEBHOOK_BASE_URL": WEBHOOK_BASE_URL,
            "WAVESPEED_BASE_URL": WAVESPEED_BASE_URL,
            # One environment for every function here; the template gives each only the secrets its work needs.
            "WAVESPEED_SECRET_ID": self.secret_id,
            "WAVESPEED_WEBHOOK_SECRET_ID": self.webhook_secret_id,
            "CALLBACK_KEY_SECRET_ID": CALLBACK_KEY_SECRET_ID,
            "DEFAULT_PROVIDER": "wavespeed",
            "DEFAULT_MODEL": "kling-v1-std",
            "WAKEUP_QUEUE_URL": self.wakeup_queue_url,
        }

    def wakeups(self, wait_seconds: int = 0) -> list[dict[str, Any]]:
        """The dispatcher's wake-ups that are due (a delayed one only once its delay is over), received from the
        queue as the dispatcher's SQS event source would receive them; `wait_seconds` long-polls for one."""
        sqs = boto3.client("sqs", region_name=REGION)
        batch = sqs.receive_message(
            QueueUrl=self.wakeup_queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return batch.get("Messages", [])

    def wakeup_queue_arn(self) -> str:
        sqs = boto3.client("sqs", region_name=REGION)
        attributes = sqs.get_queue_attributes(QueueUrl=self.wakeup_queue_url, AttributeNames=["QueueArn"])
        return attributes["Attributes"]["QueueArn"]

    def scheduled_wakeups(self) -> int:
        """How many wake-ups wait in the queue, delayed or not (none has been received yet)."""
        sqs = boto3.client("sqs", region_name=REGION)
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        attributes = sqs.get_queue_attributes(QueueUrl=self.wakeup_queue_url, AttributeNames=names)["Attributes"]
        return sum(int(attributes[name]) for name in names)

    def notifications(self) -> list[dict[str, Any]]:
        """Every notification published so far, as subscribers receive them (drains the test queue)."""
        sqs = boto3.client("sqs", region_name=REGION)
        received = []
        while True:
            batch = sqs.receive_message(QueueUrl=self.notifications_queue_url, MaxNumberOfMessages=10)
            messages = batch.get("Messages", [])
            if not messages:
                return received
            for message in messages:
                envelope = json.loads(message["Body"])
                received.append(
                    {
                        "subject": envelope.get("Subject"),
                        "body": json.loads(envelope["Message"]),
                        "attributes": {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()},
                    }
                )
                sqs.delete_message(QueueUrl=self.notifications_queue_url, ReceiptHandle=message["ReceiptHandle"])


def create_stack() -> Stack:
    """Inside an active moto mock: bucket, task and idempotency tables, topic with a queue subscribed, the
    dispatcher's wake-up queue, WaveSpeed's secrets, the callback key."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(TableName=TABLE, **table_definition())
    dynamodb.create_table(TableName=IDEMPOTENCY_TABLE, **table_definition("IdempotencyTable"))
    sns = boto3.client("sns", region_name=REGION)
    topic_arn = sns.create_topic(Name="avatar-notifications-test")["TopicArn"]
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName="notifications-test")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    wakeup_queue_url = sqs.create_queue(QueueName=WAKEUP_QUEUE)["QueueUrl"]
    secrets = boto3.client("secretsmanager", region_name=REGION)
    secrets.create_secret(Name=SECRET_ID, SecretString=json.dumps({"api_key": API_KEY}))
    secrets.create_secret(Name=WEBHOOK_SECRET_ID, SecretString=json.dumps({"webhook_secret": WEBHOOK_SECRET}))
    secrets.create_secret(Name=CALLBACK_KEY_SECRET_ID, SecretString=json.dumps({"key": CALLBACK_KEY}))
    return Stack(BUCKET, TABLE, topic_arn, queue_url, SECRET_ID, IDEMPOTENCY_TABLE, wakeup_queue_url)


def configure_cometapi() -> dict[str, str]:
    """Inside an active moto mock: CometAPI's secret; returns the environment that makes it a second provider."""
    boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name=COMETAPI_SECRET_ID, SecretString=json.dumps({"api_key": COMETAPI_API_KEY})
    )
    return {"COMETAPI_SECRET_ID": COMETAPI_SECRET_ID, "COMETAPI_BASE_URL": COMETAPI_BASE_URL}
