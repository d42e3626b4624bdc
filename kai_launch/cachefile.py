"""Private cache files: the one way kai-run writes into its user cache dir.

Every cache (merged CA bundles, JVM truststores, PAC files, OAuth2 tokens, the macOS keychain
export) is written whole or not at all: a temp file in the same directory, fsync, os.replace, so a
concurrent reader sees the old file or the new one. Files are 0600 and directories 0700, the cache
root included: a token or a PAC answer is nobody else's business.
"""

from __future__ import annotations

import os

from kai_launch import paths


def private_dir(directory: str) -> None:
    """Create `directory` (and the cache root above it) 0700; tighten an existing one we own."""
    root = paths.user_cache_dir()
    for path in (root, directory) if directory.startswith(root + os.sep) else (directory,):
        os.makedirs(path, mode=0o700, exist_ok=True)
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o700)
        except OSError:
            pass  # not ours (a shared cache dir): the files themselves are still 0600


def write_private(target: str, data: bytes) -> None:
    """Write `target` atomically, mode 0600, its directory 0700. Raises OSError; no temp file is
    left behind."""
    import time

    private_dir(os.path.dirname(target))
    # Unique per writer: two kai-runs filling the same cache entry must not share a temp file.
    tmp = f"{target}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        import contextlib

        with contextlib.suppress(OSError):  # the original error is the one worth reporting
            os.unlink(tmp)
        raise


def write_quietly(target: str, data: bytes) -> bool:
    """write_private for caches whose loss costs only speed: False instead of an error."""
    try:
        write_private(target, data)
    except OSError:
        return False
    return True
