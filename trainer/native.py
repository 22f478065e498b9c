"""The sampler's step apart from its big products (each layer's gates, the output layer, the
draw), in C (native.c): built for this machine by `make install` or the first time it is asked
for, and kept in the user's cache folder (where builds unused for a month are pruned). Without
a C compiler, or if the build fails, `library()` is None (the reason logged once) and the
sampler steps in torch alone, as it did before: the same odds, ~70 small calls a step where C
makes five."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
# -march=native: built where it runs (the file's name holds the CPU's flags, so a cache folder
# shared by other machines never hands one a library built for another).
# -fassociative-math (and the two it needs): a sum may be split into lanes, so that a dot
# product vectorises; it rounds as torch's own products do, in an order of its own.
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno",
         "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-shared", "-fPIC")
LIBS = ("-lm",)  # the draw's expf, logf and log1pf (found in the process anyway, but said)
BUILD_SECONDS = 120
# Each change of the source (or compiler, or CPU) makes a new build; a build that no process
# here has loaded for this long is removed when another is made (loading one marks it used).
UNUSED_DAYS = 30

_lock = threading.Lock()
_loaded: list[ctypes.PyDLL | None] = []  # [] until tried, then [the library or None]


def cache_folder() -> Path:
    """Where built libraries are kept: $XDG_CACHE_HOME/mimic, else ~/.cache/mimic."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mimic"


def _cpu() -> str:
    """What the compiler's -march=native sees: the CPU's feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS + LIBS).encode(), compiler.encode(),
                                     _cpu().encode()])).hexdigest()[:16]
    built = cache_folder() / f"sampler-{key}.so"
    if built.exists():
        # Used now: kept by _prune (not where this user may read the folder but not write).
        with contextlib.suppress(OSError):
            os.utime(built)
        return built
    built.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and moved in whole: another process building at once, or one killed
    # halfway, never leaves a half-written library under the name that is loaded.
    fd, partial = tempfile.mkstemp(dir=built.parent, prefix="sampler-", suffix=".so.part")
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), *LIBS],
                              capture_output=True, text=True, timeout=BUILD_SECONDS)
        if done.returncode:
            raise OSError(done.stderr.strip()[-500:] or f"{compiler} exited {done.returncode}")
        os.replace(partial, built)
    finally:
        Path(partial).unlink(missing_ok=True)
    _prune(built.parent)
    return built


def _prune(folder: Path) -> None:
    """Remove the builds unused for UNUSED_DAYS, and what builds killed halfway left (a
    partial file older than any build may take). A process that has one loaded keeps it: the
    file goes, its mapping stays."""
    now = time.time()
    for found in folder.glob("sampler-*.so*"):
        limit = UNUSED_DAYS * 86_400 if found.suffix == ".so" else 10 * BUILD_SECONDS
        try:
            if now - found.stat().st_mtime > limit:
                found.unlink()
        except OSError:  # gone already (another process pruned it), or not ours to remove
            pass


def _load() -> ctypes.PyDLL | None:
    compiler = shutil.which(os.environ.get("CC") or "cc")
    if compiler is None:
        log.warning("no C compiler (cc, or $CC) here: the sampler steps in torch alone, "
                    "1.3-2x slower a character (install gcc or clang to speed it up)")
        return None
    size, pointer = ctypes.c_long, ctypes.c_void_p
    try:
        # PyDLL: the calls keep the interpreter lock; they take tens of microseconds (letting
        # it go made no difference, BENCHMARKS.md).
        lib = ctypes.PyDLL(str(_build(compiler)))
        lib.mimic_layer.argtypes = [size, size, size, pointer, pointer, pointer, pointer,
                                    pointer, pointer, pointer, size, pointer, pointer, pointer,
                                    pointer, pointer, pointer, pointer]
        lib.mimic_head.argtypes = [size, size, size, pointer, pointer, pointer, size, pointer,
                                   pointer, pointer, size, pointer, pointer, pointer, pointer]
        lib.mimic_draw.argtypes = [size, size, pointer, pointer, pointer, size, size,
                                   ctypes.c_float, *[pointer] * 10]
        lib.mimic_max_rank.restype = size
    except (OSError, AttributeError, subprocess.SubprocessError) as e:
        # (AttributeError: a library under that name without these functions)
        log.warning("the sampler's C step could not be built (%s): stepping in torch alone", e)
        return None
    lib.mimic_layer.restype = lib.mimic_head.restype = lib.mimic_draw.restype = None
    return lib


def library() -> ctypes.PyDLL | None:
    """The built library (built on the first call), or None where it cannot be."""
    with _lock:
        if not _loaded:
            _loaded.append(_load())
        return _loaded[0]


if __name__ == "__main__":  # `make install` builds it here, so a first reply does not wait
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = library()
    print(f"the sampler's C step: {found._name}" if found is not None else
          "the sampler's C step: not built (above); replies are drawn in torch alone")
