"""IAM as AWS enforces it, in the embedded AWS: a request is served only if its caller's policies allow the action on
the resource it names.

moto can check identity policies but, left alone, it cannot be used for that here: it authorises DynamoDB, SNS and
Secrets Manager requests against ``*`` rather than the table, topic or secret they name (so every policy scoped to a
resource, as SAM's are, would refuse them), it fails with HTTP 500 on a presigned S3 URL, and it never lets a
presigned URL expire. This module fills those gaps while the embedded AWS runs:

* the operator's access key (what the developer at this machine, the tests and the CLI sign with) is the account's
  root user: allowed everything, as an administrator would be;
* every other caller is an IAM user or a role session (each function's role, assumed at start) and is checked
  action by action against its inline and attached policies, with the resource ARN AWS would check: the table or
  its index, the stream, the topic, the secret, the queue, the bucket or object;
* a presigned S3 URL is honoured until its X-Amz-Expires runs out, and only while the role session that signed it
  lasts (a URL never outlives the credentials that signed it), then refused with 403.

What it does not do (the README lists it): conditions other than moto's own, resource-based policies (bucket, queue
and topic policies), permission boundaries, SCPs, and signature checks of S3 requests.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlparse

from moto import settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import AccessDeniedError, JsonRESTError
from moto.dynamodb.responses import DynamoHandler
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler
from moto.events.responses import EventsHandler
from moto.iam.access_control import S3IAMRequest
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.sns.responses import SNSResponse
from moto.sqs.responses import SQSResponse
from moto.sts.models import sts_backends

__all__ = ["enforced_iam"]

_ANY = "*"


class _JsonAccessDenied(JsonRESTError):
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("AccessDeniedException", message)


def _dynamodb_request(handler: DynamoHandler) -> dict[str, Any]:
    return handler.body if isinstance(handler.body, dict) else json.loads(handler.body or "{}")


def _table_arn(handler: DynamoHandler, name: str) -> str:
    return f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{name}"


def _table_resource(handler: DynamoHandler) -> str:
    """The ARN AWS authorises a DynamoDB request against: the table, or the index a Query or Scan reads."""
    body = _dynamodb_request(handler)
    name = body.get("TableName")
    # A batch: AWS checks every table it names; each of ours names one table.
    if name is None and body.get("RequestItems"):
        name = next(iter(body["RequestItems"]))
    if name is None:
        return _ANY
    if name.startswith("arn:"):
        return str(name)
    arn = _table_arn(handler, name)
    index = body.get("IndexName")
    return f"{arn}/index/{index}" if index else arn


# A transaction needs no permission of its own: each of its parts is authorised as the single-item action it is
# (DynamoDB developer guide, "Using IAM with DynamoDB transactions").
_TRANSACTION_PART_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}


def _transaction_parts(handler: DynamoHandler) -> list[tuple[str, str]]:
    """(action, table ARN) of every part of a TransactWriteItems or TransactGetItems request."""
    return [
        (_TRANSACTION_PART_ACTIONS[kind], _table_arn(handler, part["TableName"]))
        for item in _dynamodb_request(handler).get("TransactItems", [])
        for kind, part in item.items()
    ]


# SQS authorises a batch as the single-message action it batches (SQS developer guide, "batch actions").
_SQS_BATCH_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def _stream_resource(handler: DynamoDBStreamsHandler) -> str:
    """The stream's ARN; a GetRecords names only its shard iterator, which starts with the stream's ARN."""
    for key in ("StreamArn", "ShardIterator"):
        if value := handler._get_param(key):
            return str(value).split("|", 1)[0]
    if table := handler._get_param("TableName"):
        return f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{table}/stream/*"
    return _ANY


def _topic_resource(handler: SNSResponse) -> str:
    return str(handler._get_param("TopicArn") or handler._get_param("TargetArn") or _ANY)


def _secret_resource(handler: SecretsManagerResponse) -> str:
    secret_id = handler._get_param("SecretId")
    if not secret_id:
        return _ANY
    try:
        return str(handler.backend.secrets[secret_id].arn)
    except KeyError:
        return _ANY


def _bus_resource(handler: EventsHandler) -> str:
    """The event bus a PutEvents puts on (each of ours names one), as an ARN: the default bus when none is named."""
    entries = handler._get_param("Entries") or [{}]
    bus = str(entries[0].get("EventBusName") or "default")
    return (
        bus if bus.startswith("arn:") else f"arn:aws:events:{handler.region}:{handler.current_account}:event-bus/{bus}"
    )


_RESOURCE_OF: dict[type, Callable[[Any], str]] = {
    DynamoHandler: _table_resource,
    DynamoDBStreamsHandler: _stream_resource,
    SNSResponse: _topic_resource,
    SecretsManagerResponse: _secret_resource,
    EventsHandler: _bus_resource,
}


def _credential_scope(handler: Any) -> tuple[str | None, dict[str, list[str]]]:
    """The access key id a request is signed with (header or presigned query), and the query parameters."""
    query = parse_qs(urlparse(handler.uri).query)
    authorization = handler.headers.get("Authorization", "")
    if "Credential=" in authorization:
        return authorization.split("Credential=", 1)[1].split("/", 1)[0], query
    if "X-Amz-Credential" in query:  # SigV4
        return query["X-Amz-Credential"][0].split("/", 1)[0], query
    if "AWSAccessKeyId" in query:  # SigV2, which S3 still takes for presigned URLs
        return query["AWSAccessKeyId"][0], query
    return None, query


def _presigned_expired(query: dict[str, list[str]], access_key_id: str, account_id: str) -> bool:
    """A presigned URL past its X-Amz-Expires, or signed by a role session that has ended."""
    now = datetime.datetime.now(datetime.UTC)
    if "Expires" in query:  # SigV2: the moment it expires
        expires = datetime.datetime.fromtimestamp(int(query["Expires"][0]), datetime.UTC)
    else:
        signed_at = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        expires = signed_at + datetime.timedelta(seconds=int(query["X-Amz-Expires"][0]))
    if now > expires:
        return True
    for session in sts_backends[account_id]["aws"].assumed_roles:
        if session.access_key_id == access_key_id:
            expiration = session.expiration
            if expiration.tzinfo is None:
                expiration = expiration.replace(tzinfo=datetime.UTC)
            return now > expiration
    return False


def _permissions_needed(handler: Any, action: str, resource: str) -> list[tuple[str, str]]:
    """(IAM action, resource) pairs a request must be allowed: itself, or what AWS authorises it as."""
    if isinstance(handler, DynamoHandler) and action in ("TransactWriteItems", "TransactGetItems"):
        return _transaction_parts(handler)
    if isinstance(handler, SQSResponse) and action in _SQS_BATCH_ACTIONS:
        return [(_SQS_BATCH_ACTIONS[action], resource)]
    return [(action, resource)]


@contextmanager
def enforced_iam(operator_access_key: str) -> Iterator[None]:
    """While inside, every request to moto (in this process) is authorised as AWS would authorise it."""
    original = ActionAuthenticatorMixin._authenticate_and_authorize_action
    original_count = settings.INITIAL_NO_AUTH_ACTION_COUNT

    def authorise(self: Any, iam_request_cls: type, resource: str = _ANY) -> None:
        access_key_id, query = _credential_scope(self)
        if access_key_id == operator_access_key:
            return
        headers = self.headers
        if access_key_id is not None and "Authorization" not in headers:
            # A presigned URL: authorised as the identity that signed it, while the URL and its signer's session last.
            scope = f"{access_key_id}/19700101/{self.region}/s3/aws4_request"
            credential = query.get("X-Amz-Credential", [scope])[0]
            token = query.get("X-Amz-Security-Token") or query.get("x-amz-security-token") or []
            headers = {
                "Authorization": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature=presigned"
            }
            if token:
                headers["X-Amz-Security-Token"] = token[0]
        elif access_key_id is None:
            headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=anonymous/19700101/us-east-1/s3/aws4_request"}
        action = self._get_action()
        checks = _permissions_needed(self, action, resource)

        def request_for(action: str) -> Any:
            return iam_request_cls(
                account_id=self.current_account,
                method=self.method,
                path=self.raw_path,
                data=self.data,
                body=self.raw_body,
                headers=headers,
                action=action,
            )

        try:
            request = request_for(action)
            # moto computes some S3 signatures differently from botocore (e.g. ListMultipartUploads with a prefix),
            # so S3 requests are identified by their access key and session token without checking the signature.
            if headers is self.headers:
                if iam_request_cls is not S3IAMRequest:
                    request.check_signature()
            elif access_key_id is not None and _presigned_expired(query, access_key_id, self.current_account):
                request._raise_access_denied()
            for part_action, part_resource in checks:
                request_for(part_action).check_action_permitted(part_resource)
        except AccessDeniedError as denied:
            if self.headers.get("X-Amz-Target"):
                # JSON-protocol services (DynamoDB, SQS, Secrets Manager) answer 400 AccessDeniedException.
                raise _JsonAccessDenied(denied.message) from denied
            raise

    determiners = {cls: getattr(cls, "_determine_resource", None) for cls in _RESOURCE_OF}
    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorise  # type: ignore[method-assign]
    for cls, resource_of in _RESOURCE_OF.items():
        cls._determine_resource = resource_of  # type: ignore[attr-defined]
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = original_count
        ActionAuthenticatorMixin._authenticate_and_authorize_action = original  # type: ignore[method-assign]
        for cls, previous in determiners.items():
            if previous is None:
                del cls._determine_resource  # type: ignore[attr-defined]
            else:
                cls._determine_resource = previous  # type: ignore[attr-defined]
