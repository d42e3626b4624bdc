"""The one error family kai-run raises; the CLI layer turns it into one line plus a hint."""

from __future__ import annotations

# Exit codes follow the shell's conventions so that scripts can tell kai-run's failures apart
# from the child's: 2 is "usage/config problem", 126/127 mirror what a shell says for a command
# that cannot be run or found.
EXIT_ERROR = 2
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class KaiRunError(Exception):
    """A problem kai-run can explain: what went wrong, where, and how to fix it."""

    exit_code: int = EXIT_ERROR

    def __init__(
        self,
        what: str,
        where: str | None = None,
        hint: str | None = None,
        *,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def message(self) -> str:
        """The single line shown to the user (without the `kai-run: error:` prefix)."""
        return f"{self.what} ({self.where})" if self.where else self.what

    def __str__(self) -> str:
        return self.message()


class ConfigError(KaiRunError):
    """A profile file cannot be read, parsed, or does not follow the schema."""


class ProfileError(KaiRunError):
    """A profile cannot be selected or resolved (unknown name, `extends` cycle...)."""


class SecretError(KaiRunError):
    """A secret reference could not be resolved."""


class TrustError(KaiRunError):
    """A CA bundle file is missing, unreadable or holds no certificate."""


class LaunchError(KaiRunError):
    """The command could not be started."""


class SidecarError(KaiRunError):
    """The sidecar proxy could not be started, did not become ready, or failed."""


class EditError(KaiRunError):
    """A profile edit was refused; the file was left untouched."""


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    """A `did you mean 'x'?` hint, or None when nothing is close."""
    import difflib  # only on error paths: keeps the exec path lean

    exact = [c for c in choices if c.lower() == word.lower()]
    close = exact or difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
