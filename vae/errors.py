"""User-facing errors: entry points print these as one line and exit with status 2."""


class VAEError(Exception):
    """An error the user can fix; its message says what to do next."""


class ConfigError(VAEError):
    """A config value or combination that cannot work."""


class DataError(VAEError):
    """Missing, corrupt or malformed data files."""


class TrainingError(VAEError):
    """Training cannot go on (e.g. a non-finite loss)."""


class WriteError(VAEError):
    """An output file cannot be written (disk full, quota, read-only or forbidden folder, ...); the previous
    version of the file, if any, is left as it was."""


class Interrupted(VAEError):
    """Training stopped on SIGTERM or SIGINT after writing a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
