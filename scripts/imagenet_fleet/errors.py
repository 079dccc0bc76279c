"""The one error type a user can act on: it names the cause and the fix."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment that the user must fix; the CLIs print it as one line and exit 2."""

    def __init__(self, cause: str, fix: str) -> None:
        super().__init__(f"{cause} (fix: {fix})")
        self.cause = cause
        self.fix = fix

    def __reduce__(self) -> tuple[type[UserError], tuple[str, str]]:
        # Exceptions pickle their `args` (one message here), not ours: say how to rebuild one, so that a
        # UserError raised in a worker process reaches the parent intact.
        return (type(self), (self.cause, self.fix))
