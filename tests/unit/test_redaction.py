"""Provider text quoted in our messages: secrets we sent (signed URLs, callback tokens, keys) never come back out."""

from __future__ import annotations

import pytest

from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, SubmissionRequest
from avatar_pipeline.domain.redaction import MAX_QUOTED_CHARS, REDACTED, mask_secrets, redact_url
from avatar_pipeline.providers.registry import PROVIDERS, describe_failure

SIGNED = (
    "https://bucket.s3.amazonaws.com/in/face.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAEXAMPLECREDENTIAL%2F20250601%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN&X-Amz-Signature=5f1e0c0ffee5ignature"
)
SIGNED_SECRETS = ("ASIAEXAMPLECREDENTIAL", "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN", "5f1e0c0ffee5ignature")


def test_describe_failure_masks_what_the_provider_reported() -> None:
    # Given a provider-reported failure quoting our presigned input, our callback URL and a bearer key
    job = ProviderJob(
        provider_task_id="p-1",
        status=ProviderJobStatus.FAILED,
        error_code="1200",
        error_message=(
            f"could not fetch {SIGNED}; callback https://hooks.example.com/webhooks/wavespeed?task_id=t&token=cb-secret"
            " refused Authorization: Bearer live-key-abcdef0123"
        ),
    )

    # When it is described for a task's reason and the notification
    described = describe_failure("wavespeed", job)

    # Then it says who failed and where, without any of the secrets
    assert described.startswith("WaveSpeed could not make the video (code 1200): could not fetch ")
    assert "https://bucket.s3.amazonaws.com/in/face.png" in described
    assert "https://hooks.example.com/webhooks/wavespeed" in described
    for secret in (*SIGNED_SECRETS, "cb-secret", "live-key-abcdef0123"):
        assert secret not in described
    assert REDACTED in described


def test_describe_failure_caps_a_long_provider_message() -> None:
    # Given a provider-reported failure far longer than a reason should be
    job = ProviderJob(provider_task_id="p-1", status=ProviderJobStatus.FAILED, error_message="x" * 10_000)
    # When it is described
    described = describe_failure("cometapi", job)
    # Then the provider's part is capped
    assert len(described) <= len("CometAPI could not make the video: ") + MAX_QUOTED_CHARS


def test_redact_url_drops_the_query_and_fragment() -> None:
    # Given a presigned URL / When it is redacted / Then only scheme, host and path remain
    assert redact_url(SIGNED + "#part") == "https://bucket.s3.amazonaws.com/in/face.png"


@pytest.mark.parametrize(
    ("text", "secrets", "kept"),
    [
        pytest.param(f"bad image {SIGNED}, try again", SIGNED_SECRETS, "bad image https://bucket", id="signed-url"),
        pytest.param(
            f'{{"image": "{SIGNED}"}}',
            SIGNED_SECRETS,
            '{"image": "https://bucket.s3.amazonaws.com/in/face.png"}',
            id="url-in-json",
        ),
        pytest.param(
            "bucket.s3.amazonaws.com/in/face.png?X-Amz-Signature=5f1e0c0ffee5ignature&x=1",
            ("5f1e0c0ffee5ignature",),
            "X-Amz-Signature=[redacted]&x=1",
            id="url-without-scheme",
        ),
        pytest.param(
            "webhook=https%3A%2F%2Fhooks.example.com%2Fw%3Ftask_id%3Dt%26token%3Dcb-secret%26x%3D1",
            ("cb-secret",),
            "token%3D[redacted]%26x%3D1",
            id="percent-encoded-callback",
        ),
        pytest.param("Authorization: Bearer abc.def-ghi_123", ("abc.def-ghi_123",), "Bearer [redacted]", id="bearer"),
        pytest.param(
            "key sk-AbCdEf0123456789xyz is invalid", ("sk-AbCdEf0123456789xyz",), "key [redacted] is", id="sk"
        ),
        pytest.param(
            "secret whsec_c2VjcmV0LXNlY3JldA== rotated",
            ("whsec_c2VjcmV0LXNlY3JldA==",),
            "secret [redacted]",
            id="whsec",
        ),
        pytest.param("api_key=0123456789abcdef, retry", ("0123456789abcdef",), "api_key=[redacted], retry", id="param"),
        pytest.param(
            "access key AKIAIOSFODNN7EXAMPLE denied",
            ("AKIAIOSFODNN7EXAMPLE",),
            "access key [redacted]",
            id="aws-access-key-id",
        ),
    ],
)
def test_mask_secrets_removes_the_secret_and_keeps_the_rest(text: str, secrets: tuple[str, ...], kept: str) -> None:
    # Given provider text echoing a secret / When it is masked
    masked = mask_secrets(text)
    # Then the secret is gone and what helps a reader is still there
    for secret in secrets:
        assert secret not in masked
    assert kept in masked


def test_mask_secrets_masks_known_secrets_of_any_shape() -> None:
    # Given a key with no recognisable prefix (WaveSpeed's are plain hex), echoed back
    key = "0f9e8d7c6b5a49382716"
    # When the text is masked knowing that key
    masked = mask_secrets(f"invalid key {key}!", known=(key,))
    # Then it is masked
    assert masked == f"invalid key {REDACTED}!"


def test_mask_secrets_leaves_ordinary_text_alone_and_caps_it() -> None:
    assert mask_secrets("image too small: 120x90 (need 300x300)") == "image too small: 120x90 (need 300x300)"
    long = mask_secrets("y" * 5000)
    assert len(long) == MAX_QUOTED_CHARS
    assert long.endswith("...")


def test_mask_secrets_masks_before_it_caps() -> None:
    # Given a signed URL that straddles the cap
    text = "z" * (MAX_QUOTED_CHARS - 60) + " " + SIGNED
    # When masked
    masked = mask_secrets(text)
    # Then no part of the query survives the cut
    assert "X-Amz" not in masked
    assert "?" not in masked


def test_a_submission_requests_repr_shows_no_link_nor_callback_token() -> None:
    # Given a submission request with presigned links and a callback URL carrying a token
    request = SubmissionRequest(
        task_id="0" * 32,
        image_url="https://b.s3.amazonaws.com/inbox/j/face.png?X-Amz-Signature=imgsig",
        audio_url="https://b.s3.amazonaws.com/inbox/j/voice.mp3?X-Amz-Signature=audsig",
        prompt=None,
        model_id=PROVIDERS.model("wavespeed", "kling-v1-std").model_id,
        webhook_url="https://hooks.example/v1/webhooks/wavespeed?task_id=x&token=tok3n",
    )
    # When it is written out as a log line or an error would write it
    written = repr(request) + str(request)
    # Then none of its secrets is there, while the task it is about is
    assert not any(secret in written for secret in ("imgsig", "audsig", "tok3n"))
    assert "0" * 32 in written
