"""The key test contexts and test stacks derive callback tokens from (kept apart: importing it loads nothing else)."""

CALLBACK_KEY = "test-callback-key"
