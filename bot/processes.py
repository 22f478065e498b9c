"""`mimic serve --processes N`: N copies of the app, each a process of its own, so answers do
not queue for one interpreter lock (bench/latency.py measures it). In HTTP mode they listen on
one port (SO_REUSEPORT: the kernel spreads connections among them); in Socket Mode each opens
its own connection and Slack spreads the requests. What they share goes through the store and
the data folder, as replicas' does (README: Outgrowing one machine).

The supervisor here starts them, starts another for one that dies (giving up on a crash loop),
and on Ctrl-C or SIGTERM stops them all and waits for them to finish what they took.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from mimic.core.children import die_with_parent

log = logging.getLogger(__name__)
WORKER_ENV = "MIMIC_SERVE_WORKER"  # set in a worker: it serves, it does not supervise
# More restarts than this within a minute is a crash loop (a bad token, a port taken): stop.
RESTARTS_PER_MINUTE = 3
STOP_TIMEOUT_S = 60.0


class Supervisor:
    def __init__(self, args: list[str], processes: int) -> None:
        """`args`: `mimic serve`'s arguments for each worker."""
        self.args, self.processes = args, processes
        self._stopping = threading.Event()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.restarts: list[float] = []  # when, for the last minute's count

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, WORKER_ENV: "1", "MIMIC_SERVE_PROCESSES": str(self.processes)}
        # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which stops
        # each worker once (a second signal would cut a worker's own clean stop short).
        return subprocess.Popen([sys.executable, "-m", "mimic.cli", "serve", *self.args],
                                env=env, start_new_session=True, preexec_fn=die_with_parent)

    def run(self) -> int:
        """Serve until stopped; the exit status (0 when every worker stopped cleanly)."""
        def stop(_signum: int, _frame: object) -> None:
            self._stopping.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.workers = [self._start() for _ in range(self.processes)]
            while not self._stopping.wait(0.5):
                for i, worker in enumerate(self.workers):
                    if worker.poll() is None:
                        continue
                    now = time.monotonic()
                    self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                    if len(self.restarts) > RESTARTS_PER_MINUTE:
                        log.error("mimic serve processes keep exiting (the last with status "
                                  "%s); stopping the others", worker.returncode)
                        self._stop_all()
                        return 1
                    log.warning("a mimic serve process exited (status %s); starting another",
                                worker.returncode)
                    self.workers[i] = self._start()
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> int:
        """SIGTERM to every worker (each answers what it took, then exits 0), and wait."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        status = 0
        for worker in self.workers:
            try:
                # Killed by our SIGTERM: it was still starting (it answers it once serving).
                status |= worker.wait(STOP_TIMEOUT_S) not in (0, -signal.SIGTERM)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
                status = 1
        return status
