"""The taskwire worker runtime, as this wheel installed it: `path()` is the `taskwire-worker`
binary, which taskwire's Python worker (`taskwire.worker`) starts beside its handlers."""

import os
import sysconfig

__all__ = ["path"]


def path() -> str:
    """The installed `taskwire-worker` binary."""
    name = "taskwire-worker.exe" if os.name == "nt" else "taskwire-worker"
    for scheme in (None, "posix_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        candidate = os.path.join(scripts, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{name} is not where taskwire-worker-bin installed it ({sysconfig.get_path('scripts')})")
