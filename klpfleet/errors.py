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
