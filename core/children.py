"""Child processes that must not outlive the process that started them: torchrun and its
training workers, `mimic serve --processes`' servers."""

from __future__ import annotations

import ctypes
import signal
import sys

# Looked up once, here: after a fork (preexec_fn), with other threads about (a progress bar),
# the child should run as little as it can before exec.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (even by SIGKILL), so that no
    child trains or serves on alone. As a Popen preexec_fn, or called by the child itself."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
