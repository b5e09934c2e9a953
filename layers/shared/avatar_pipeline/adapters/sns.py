"""Notifier on SNS: one message per finished task, a JSON body plus attributes subscribers can filter on."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from avatar_pipeline.domain.models import Notification

# SNS rejects subjects longer than 100 characters or containing line breaks or control characters.
MAX_SUBJECT_LENGTH = 100
FALLBACK_SUBJECT = "Talking-avatar video update"


class SnsNotifier:
    """Implements `ports.Notifier` with a boto3 SNS client and one topic."""

    def __init__(self, sns_client: Any, topic_arn: str) -> None:
        self._sns = sns_client
        self._topic_arn = topic_arn

    def publish(self, notification: Notification) -> str:
        attributes: dict[str, dict[str, str]] = {
            "status": {"DataType": "String", "StringValue": notification.status.value},
        }
        if notification.job:  # SNS refuses empty attribute values
            attributes["job"] = {"DataType": "String", "StringValue": notification.job}
        # Machine subscribers (SQS, Lambda, HTTP) get the JSON body; email subscribers get readable text.
        message = {"default": notification.model_dump_json(exclude_none=False), "email": notification.email_text}
        response = self._sns.publish(
            TopicArn=self._topic_arn,
            Subject=_safe_subject(notification.subject),
            Message=json.dumps(message),
            MessageStructure="json",
            MessageAttributes=attributes,
        )
        return str(response["MessageId"])


def _safe_subject(subject: str) -> str:
    """The subject as SNS (and email) accepts it: printable ASCII, one line, at most 100 characters.

    Job names come from S3 keys and may hold accents or other scripts; the JSON body keeps them intact.
    """
    ascii_text = unicodedata.normalize("NFKD", subject).encode("ascii", "ignore").decode("ascii")
    printable = "".join(char if char.isprintable() else " " for char in ascii_text)
    cleaned = " ".join(printable.split())[:MAX_SUBJECT_LENGTH].strip()
    return cleaned or FALLBACK_SUBJECT
