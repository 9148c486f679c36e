"""Errors that the CLI turns into exit codes (docs/design.md, "Exit codes")."""


class InputError(Exception):
    """Bad input: a spec key, a data file or a CLI argument. Exit code 2.

    The message is one line and names the offending key or file.
    """

    exit_code = 2


class BackendUnavailable(Exception):
    """A framework is not installed. Exit code 3; the other backends still run."""

    exit_code = 3
