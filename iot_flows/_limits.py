"""Check the open-files limit before starting thousands of connections.

Each connected device holds a socket: one descriptor in the fleet's process and one in
the hub's. Past ``ulimit -n`` every further ``accept``/``connect`` fails with
``OSError: [Errno 24] Too many open files``, once per device. So commands check first:
raise the soft limit up to the hard limit (allowed without privileges), and if even the
hard limit is too low, say so in one line with the fix.
"""

from __future__ import annotations

__all__ = ["BASE_DESCRIPTORS", "check_open_files", "open_files_limit", "raise_open_files_limit"]

#: Descriptors a command uses besides its devices (Python, SQLite, listeners, Prefect's client).
BASE_DESCRIPTORS = 256


def check_open_files(needed: int, what: str) -> str | None:
    """Make ``needed`` descriptors available to this process.

    Raises the soft ``RLIMIT_NOFILE`` to the hard limit when the soft one is too low.

    Returns:
        None when ``needed`` fit (or the platform has no such limit), else a one-line
        message naming ``what`` needs them, the limit and the fix.
    """
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = max(needed, soft) if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return None
    return (
        f"{what} needs about {needed:,} open files, but this shell allows {target:,} "
        f"(`ulimit -n`; hard limit {hard:,}): raise it (e.g. `ulimit -n {needed}` as root, "
        "or in /etc/security/limits.conf) or use fewer devices"
    )


def open_files_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE`` in force; None where it is unlimited or the platform has none."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def raise_open_files_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (a hub cannot know its fleet's size).

    Returns:
        the soft limit now in force; None where the platform has no such limit.
    """
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)
