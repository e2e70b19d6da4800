"""The error type for mistakes a user can make (bad config value, missing data, wrong checkpoint).

Entry points catch it and print its message as one line; anything else is a bug and keeps
its stack trace.
"""


class ConfigError(ValueError):
    """A user-fixable problem. The message is one line: what was wrong, what is valid, where to look."""


def find_config_error(exc: BaseException):
    """Return the ConfigError that caused `exc` (Hydra's instantiate wraps it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
