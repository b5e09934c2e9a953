"""The embedded AWS enforces IAM: each function's role, as the SAM transform of template.yaml makes it, may do what
its policies allow and nothing else; presigned links live no longer than what signed them."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from moto.sts.models import sts_backends

from avatar_local.twin.aws import ACCOUNT_ID, Credentials, EmbeddedAws, RoleSession, create_resources, create_roles
from avatar_local.twin.sam_transform import transform
from avatar_local.twin.template import Resolver, load_template

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "iam-test"


class Stack:
    def __init__(self, aws: EmbeddedAws, resolver: Resolver, refs: dict[str, str]) -> None:
        self.aws = aws
        self.resolver = resolver
        self.refs = refs
        self.bucket = refs["MediaBucket"]
        self.table = refs["TaskTable"]
        self.topic = refs["NotificationTopic"]

    def role(self, function: str) -> RoleSession:
        return self.aws.assume_role(self.resolver.attributes[(f"{function}Role", "Arn")], f"{STACK}-{function}")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    template = load_template(ROOT / "template.yaml")
    with EmbeddedAws(REGION) as aws:
        resolver = Resolver(template, stack_name=STACK, region=REGION, account_id=ACCOUNT_ID)
        created = create_resources(aws, template, resolver, STACK, {})
        create_roles(aws, transform(template, REGION), resolver, STACK)
        yield Stack(aws, resolver, created.refs)


def error_code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def test_the_poller_may_end_a_stalled_copy_of_an_output(stack: Stack) -> None:
    """Given an unfinished multipart upload under outputs/ (a copy that stalled), when the poller's role lists and
    aborts it (what discard_partial_copies does), then S3 allows both."""
    key = "outputs/job/task.mp4"
    upload = stack.aws.client("s3").create_multipart_upload(Bucket=stack.bucket, Key=key)["UploadId"]
    s3 = stack.role("PollerFunction").client("s3")

    listed = s3.list_multipart_uploads(Bucket=stack.bucket, Prefix=key)
    s3.abort_multipart_upload(Bucket=stack.bucket, Key=key, UploadId=upload)

    assert [u["UploadId"] for u in listed["Uploads"]] == [upload]
    assert "Uploads" not in stack.aws.client("s3").list_multipart_uploads(Bucket=stack.bucket, Prefix=key)


def test_a_role_is_refused_what_its_policies_do_not_allow(stack: Stack) -> None:
    """Given the webhook's role (task table, idempotency table, provider secrets), when it writes to the bucket,
    publishes a notification or reads the bucket, then each is refused as IAM refuses it."""
    webhook = stack.role("WebhookFunction")

    with pytest.raises(ClientError) as put:
        webhook.client("s3").put_object(Bucket=stack.bucket, Key="outputs/x.mp4", Body=b"x")
    with pytest.raises(ClientError) as publish:
        webhook.client("sns").publish(TopicArn=stack.topic, Message="hello")
    with pytest.raises(ClientError) as read:
        webhook.client("s3").get_object(Bucket=stack.bucket, Key="inbox/any.png")

    assert error_code(put.value) == "AccessDenied"
    assert error_code(publish.value) == "AccessDenied"
    assert error_code(read.value) == "AccessDenied"


def test_a_table_is_authorised_by_its_arn_and_an_index_by_its_own(stack: Stack) -> None:
    """Given the submit role's DynamoDB policy (the task table and its indexes), when it reads the task table, queries
    an index and reads a table it was not given, then only the last is refused, with DynamoDB's error."""
    dynamodb = stack.role("SubmitFunction").client("dynamodb")

    dynamodb.get_item(TableName=stack.table, Key={"pk": {"S": "TASK#none"}})
    dynamodb.query(
        TableName=stack.table,
        IndexName="in-flight",
        KeyConditionExpression="in_flight = :yes",
        ExpressionAttributeValues={":yes": {"S": "1"}},
    )
    with pytest.raises(ClientError) as other:
        dynamodb.get_item(TableName=stack.resolver.resource_values["IdempotencyTable"], Key={"id": {"S": "x"}})

    assert error_code(other.value) == "AccessDeniedException"


def test_a_transaction_is_authorised_part_by_part(stack: Stack) -> None:
    """Given DynamoDB authorises a transaction by its parts' own actions (there is no TransactWriteItems permission),
    when the submit role writes a transaction on its table, then it is allowed; on a table it may not write, refused."""
    dynamodb = stack.role("SubmitFunction").client("dynamodb")
    item = {"pk": {"S": "TASK#transaction"}}

    dynamodb.transact_write_items(TransactItems=[{"Put": {"TableName": stack.table, "Item": item}}])
    other_table = stack.resolver.resource_values["IdempotencyTable"]
    with pytest.raises(ClientError) as refused:
        dynamodb.transact_write_items(TransactItems=[{"Put": {"TableName": other_table, "Item": {"id": {"S": "x"}}}}])

    assert "dynamodb:PutItem" in str(refused.value)


def test_an_unknown_access_key_is_refused(stack: Stack) -> None:
    """Given credentials the embedded AWS never issued (e.g. someone's real ones), then every request is refused."""
    stranger = boto3.client(
        "s3",
        endpoint_url=stack.aws.endpoint_url,
        region_name=REGION,
        aws_access_key_id="AKIAREALKEYNOTHERE01",
        aws_secret_access_key="secret",
    )

    with pytest.raises(ClientError) as refused:
        stranger.list_objects_v2(Bucket=stack.bucket)

    assert error_code(refused.value) == "InvalidAccessKeyId"


def presigned(session: RoleSession, bucket: str, key: str, expires_in: int) -> str:
    return str(
        session.client("s3").generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_in
        )
    )


def test_a_presigned_link_works_while_it_and_its_signers_session_last(stack: Stack) -> None:
    """Given an input uploaded to the inbox and links to it signed by the dispatcher's role, then a link within its
    expiry works, a link past its expiry is refused, and a link whose signing session has ended is refused, whatever
    its own expiry says (as on AWS)."""
    key = "inbox/job/face.png"
    stack.aws.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=b"face")
    session = stack.role("DispatchFunction")
    valid = presigned(session, stack.bucket, key, 3600)
    expired = presigned(session, stack.bucket, key, 1)
    other_session = stack.role("DispatchFunction")
    outlived = presigned(other_session, stack.bucket, key, 7 * 24 * 3600)

    ended = _end_session(other_session)
    time.sleep(2.1)  # the 1-second link expires

    assert httpx.get(valid).content == b"face"
    assert httpx.get(expired).status_code == 403
    assert ended
    assert httpx.get(outlived).status_code == 403


def _end_session(session: RoleSession) -> bool:
    """End a role session now, as AWS does when its duration is over."""
    for assumed in sts_backends[ACCOUNT_ID]["aws"].assumed_roles:
        if assumed.access_key_id == session.credentials.access_key_id:
            assumed.expiration = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
            return True
    return False


def test_the_roles_are_the_sam_transforms_own(stack: Stack) -> None:
    """Given template.yaml, then each function's role in the embedded AWS holds exactly the inline policies and
    managed policies the SAM transform generates for it (nothing re-derived by hand)."""
    transformed = transform(load_template(ROOT / "template.yaml"), REGION)
    iam = stack.aws.client("iam")
    for logical_id, resource in transformed["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        name = f"{STACK}-{logical_id}"
        expected_inline = sorted(p["PolicyName"] for p in resource["Properties"].get("Policies", []))
        # (the ADOT layer's policy is there only with OpenTelemetryLayerArn, which this stack is not given)
        expected_managed = sorted(a for a in resource["Properties"].get("ManagedPolicyArns", []) if isinstance(a, str))

        inline = sorted(iam.list_role_policies(RoleName=name)["PolicyNames"])
        managed = sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"])

        assert inline == expected_inline, logical_id
        assert managed == expected_managed, logical_id
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        assert trust["Statement"][0]["Principal"] == {"Service": ["lambda.amazonaws.com"]}


def test_the_link_signers_key_reads_inputs_and_outputs_and_nothing_else(stack: Stack) -> None:
    """Given the link signer's key, as the stack stores it in its secret, then a link it signs for an input or an
    output works (it needs no role session, so it lives as long as it says) and one for any other key is refused."""
    secret = stack.aws.client("secretsmanager").get_secret_value(SecretId=stack.refs["LinkSignerSecret"])
    key = json.loads(secret["SecretString"])
    signer = RoleSession(stack.aws.endpoint_url, REGION, Credentials(key["access_key_id"], key["secret_access_key"]))
    s3 = stack.aws.client("s3")
    for name in ("inbox/job/voice.mp3", "outputs/job/task.mp4", "elsewhere/notes.txt"):
        s3.put_object(Bucket=stack.bucket, Key=name, Body=name.encode())

    answers = {
        name: httpx.get(presigned(signer, stack.bucket, name, 7 * 24 * 3600))
        for name in ("inbox/job/voice.mp3", "outputs/job/task.mp4", "elsewhere/notes.txt")
    }

    assert key["access_key_id"].startswith("AKIA")
    assert answers["inbox/job/voice.mp3"].content == b"inbox/job/voice.mp3"
    assert answers["outputs/job/task.mp4"].content == b"outputs/job/task.mp4"
    assert answers["elsewhere/notes.txt"].status_code == 403


def test_an_sqs_batch_is_authorised_as_the_single_message_action_it_batches(stack: Stack) -> None:
    """Given the finalize role may only sqs:SendMessage to its failure queue (what SAM grants for the stream's
    on-failure destination), when it sends a batch there, then it is allowed, as SQS authorises SendMessageBatch as
    SendMessage; a batch to a queue it was not given is refused."""
    sqs = stack.role("FinalizeFunction").client("sqs")
    entries = [{"Id": "1", "MessageBody": "record"}]

    sent = sqs.send_message_batch(QueueUrl=stack.refs["FinalizeFailureQueue"], Entries=entries)
    with pytest.raises(ClientError) as refused:
        sqs.send_message_batch(QueueUrl=stack.refs["AsyncFailureQueue"], Entries=entries)

    assert [entry["Id"] for entry in sent["Successful"]] == ["1"]
    assert "sqs:SendMessage" in str(refused.value)


def test_the_webhook_may_not_read_the_paid_api_key_nor_query_the_task_table(stack: Stack) -> None:
    """Given the internet-facing webhook's role, when it reads WaveSpeed's API key, queries or deletes in the task
    table, then each is refused; reading its own secrets (the webhook secret, the callback key) and an item is
    allowed."""
    webhook = stack.role("WebhookFunction")
    secrets = webhook.client("secretsmanager")
    dynamodb = webhook.client("dynamodb")

    with pytest.raises(ClientError) as api_key:
        secrets.get_secret_value(SecretId=stack.refs["WaveSpeedSecret"])
    with pytest.raises(ClientError) as scan:
        dynamodb.scan(TableName=stack.table)
    with pytest.raises(ClientError) as delete:
        dynamodb.delete_item(TableName=stack.table, Key={"pk": {"S": "TASK#x"}})

    assert {error_code(e.value) for e in (api_key, scan, delete)} == {"AccessDeniedException"}
    assert json.loads(secrets.get_secret_value(SecretId=stack.refs["WaveSpeedWebhookSecret"])["SecretString"])
    assert (
        len(json.loads(secrets.get_secret_value(SecretId=stack.refs["CallbackKeySecret"])["SecretString"])["key"]) == 64
    )
    assert "Item" not in dynamodb.get_item(TableName=stack.table, Key={"pk": {"S": "TASK#x"}})


@pytest.mark.parametrize(
    ("function", "readable", "unreadable"),
    [
        ("SubmitFunction", "inbox/job/face.png", "outputs/job/video.mp4"),
        ("DispatchFunction", "inbox/job/face.png", "outputs/job/video.mp4"),
        ("FinalizeFunction", "outputs/job/video.mp4", "inbox/job/face.png"),
        ("PollerFunction", "outputs/job/video.mp4", "elsewhere/secret.txt"),
    ],
)
def test_each_function_reads_only_its_part_of_the_bucket(
    stack: Stack, function: str, readable: str, unreadable: str
) -> None:
    """Given objects in inbox/, outputs/ and elsewhere, when a function's role reads them, then only the prefixes its
    work needs are readable."""
    for key in (readable, unreadable):
        stack.aws.client("s3").put_object(Bucket=stack.bucket, Key=key, Body=b"x")
    s3 = stack.role(function).client("s3")

    assert s3.get_object(Bucket=stack.bucket, Key=readable)["Body"].read() == b"x"
    with pytest.raises(ClientError) as refused:
        s3.get_object(Bucket=stack.bucket, Key=unreadable)
    assert error_code(refused.value) == "AccessDenied"
