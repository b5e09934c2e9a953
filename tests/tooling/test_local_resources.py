"""avatar_local.twin.aws.create_resources: the real template.yaml's data resources, created in the embedded AWS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from avatar_local.twin.aws import EmbeddedAws, create_resources
from avatar_local.twin.template import Resolver, load_template

ROOT = Path(__file__).resolve().parents[2]
STACK = "avatar-local"


@pytest.fixture(scope="module")
def aws() -> Iterator[EmbeddedAws]:
    with EmbeddedAws("us-east-1") as embedded:
        yield embedded


def test_every_data_resource_of_the_template_is_created_without_what_has_no_local_effect(aws: EmbeddedAws) -> None:
    """Given the template's topics, queues, tables, bucket and secrets, when the local stack creates them, then each
    exists, including the alarm topic whose KMS key (like the alarms and the dashboard) is not created locally: only
    the properties creating a resource uses are resolved."""
    template = load_template(ROOT / "template.yaml")
    resolver = Resolver(template, stack_name=STACK, region="us-east-1", account_id="123456789012")
    created = create_resources(aws, template, resolver, STACK, secret_values={})
    assert "AlarmTopicKey" not in created.refs
    topics = {t["TopicArn"] for t in aws.client("sns").list_topics()["Topics"]}
    assert {created.refs["NotificationTopic"], created.refs["AlarmTopic"]} <= topics
    queues = set(aws.client("sqs").list_queues()["QueueUrls"])
    assert {created.refs["AsyncFailureQueue"], created.refs["FinalizeFailureQueue"]} <= queues
    tables = set(aws.client("dynamodb").list_tables()["TableNames"])
    assert {created.refs["TaskTable"], created.refs["IdempotencyTable"]} <= tables
    # The bucket is named as on AWS when MediaBucketName is empty: the account, then the stack id's last UUID group.
    stack_uuid = resolver.resolve({"Ref": "AWS::StackId"}).rsplit("/", 1)[-1]
    assert created.refs["MediaBucket"] == f"123456789012-avatar-media-{stack_uuid.rsplit('-', 1)[-1]}"
    assert created.refs["MediaBucket"] in {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    # Conditional resources follow their condition (no email parameters given: no subscriptions).
    assert "NotificationEmailSubscription" not in created.refs


def test_the_bucket_takes_the_name_the_media_bucket_name_parameter_gives(aws: EmbeddedAws) -> None:
    """Given MediaBucketName is set, when the local stack creates the template's resources, then the bucket has
    exactly that name."""
    template = load_template(ROOT / "template.yaml")
    resolver = Resolver(
        template,
        stack_name="avatar-named",
        region="us-east-1",
        account_id="123456789012",
        parameters={"MediaBucketName": "my-own-media"},
    )
    created = create_resources(aws, template, resolver, "avatar-named", secret_values={})
    assert created.refs["MediaBucket"] == "my-own-media"
    assert "my-own-media" in {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
