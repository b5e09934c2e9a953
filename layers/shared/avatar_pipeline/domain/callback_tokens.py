"""The secret in each task's callback URL, derived with HMAC from a key of the stack's rather than stored.

Deriving it lets the webhook check a callback's URL before it reads anything: a forged callback costs one HMAC, not
a table read; no token sits in the task table; and a delivery captured for one task (even a validly signed one) is
refused at any other task's URL, since the token names the provider and the task it was made for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence

from avatar_pipeline.domain.errors import ProviderConfigError

# A token is 43 characters (SHA-256, base64url without padding); anything much longer is refused unread.
MAX_TOKEN_LENGTH = 64


class CallbackTokens:
    """Makes and checks callback tokens. `keys` gives the current keys, first the one that signs; all of them are
    accepted, so a key can be rotated without refusing the callbacks of tasks submitted before."""

    def __init__(self, keys: Callable[[], Sequence[str]]) -> None:
        self._keys = keys

    def token_for(self, provider: str, task_id: str) -> str:
        """The token that goes into the task's callback URL; ProviderConfigError without a key."""
        keys = self._keys()
        if not keys:
            raise ProviderConfigError(
                "no callback key is configured (CALLBACK_KEY_SECRET_ID), so its callbacks could not be authenticated"
            )
        return _derive(keys[0], provider, task_id)

    def accepts(self, provider: str, task_id: str, token: str) -> bool:
        """Whether `token` is the task's token under any current key, compared in constant time."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return False
        given = token.encode()
        return any(hmac.compare_digest(_derive(key, provider, task_id).encode(), given) for key in self._keys())


def _derive(key: str, provider: str, task_id: str) -> str:
    digest = hmac.new(key.encode(), f"callback:{provider}:{task_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
