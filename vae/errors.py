"""User-facing errors: entry points print these as one line and exit with status 2."""


class VAEError(Exception):
    """An error the user can fix; its message says what to do next."""


class ConfigError(VAEError):
    """A config value or combination that cannot work."""


class DataError(VAEError):
    """Missing, corrupt or malformed data files."""


class TrainingError(VAEError):
    """Training cannot go on (e.g. a non-finite loss)."""
