"""The error type for mistakes a user can make (bad config value, missing data, wrong checkpoint).

Entry points catch it and print its message as one line; anything else is a bug and keeps
its stack trace.
"""
import re

# torch.utils.data re-raises an error of a loader worker (or of the pin-memory thread) in the main
# process as `type(error)("Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...")`:
# the whole worker traceback as the message (torch/_utils.py, ExceptionWrapper.reraise).
_RERAISED = re.compile(r"Caught (\w+) (in [^\n]*?)\.\nOriginal Traceback", re.DOTALL)


def _recover_reraised_message(message: str):
    """The original one-line message of a ConfigError that torch re-raised from a loader worker, or None."""
    header = _RERAISED.match(message)
    if header is None:
        return None
    name, where = header.groups()
    # The traceback ends with "a2d2c.errors.ConfigError: <message>"; a chained cause comes before it.
    last = None
    for last in re.finditer(rf"^(?:[\w.]+\.)?{name}: ", message, re.MULTILINE):
        pass
    if last is None:
        return None
    return f"{message[last.end():].strip()} ({where})"


class ConfigError(ValueError):
    """A user-fixable problem. The message is one line: what was wrong, what is valid, where to look.

    One raised in a DataLoader worker reaches the main process with the worker's traceback as its
    message; that is cut back to the original line, with where it happened, and the traceback is
    kept in ``worker_traceback``.
    """

    def __init__(self, *args):
        self.worker_traceback = None
        if len(args) == 1 and isinstance(args[0], str):
            recovered = _recover_reraised_message(args[0])
            if recovered is not None:
                self.worker_traceback, args = args[0], (recovered,)
        super().__init__(*args)


def find_config_error(exc: BaseException):
    """Return the ConfigError that caused `exc` (Hydra's instantiate wraps it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConfigError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
