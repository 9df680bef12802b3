"""Domain errors. The CLI turns any of these into one line on stderr and a non-zero exit."""


class KlpfleetError(Exception):
    """An error the operator can act on; its message is the whole story."""

    exit_code = 1


class UsageError(KlpfleetError):
    """Bad input: unknown names, malformed specs, unreadable files."""

    exit_code = 2


class DatabaseError(KlpfleetError):
    """The database cannot be reached, is missing, or has the wrong schema."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception (a database driver's own error when there is one)."""
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(exc).__name__])[0]
