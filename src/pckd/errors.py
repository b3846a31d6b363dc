"""User-facing errors: one line naming the key or file and the fix; the CLI prints them and exits 2."""


class UserError(Exception):
    """A problem with the user's input (config, files, data) rather than a bug.

    The message must be one line that names the offending key/file/value and says how to fix it.
    """

    exit_code = 2


class WriteFailed(UserError):
    """A file could not be written (disk full, quota, permissions); the message names the file. Exit 1: the
    input was fine, the machine was not."""

    exit_code = 1


class PckdWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. resuming from ``last.prev.pt``);
    the CLI prints it as one ``pckd: warning: ...`` line."""


class TrainingStopped(Exception):
    """Training ended early on purpose (a signal) or by a guard (a non-finite loss); ``exit_code`` says how
    (0 SIGTERM, 130 SIGINT, 3 non-finite, 1 a checkpoint could not be written)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
