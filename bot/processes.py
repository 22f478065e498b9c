"""`mimic serve --processes N`: N copies of the app, each a process of its own, so answers do
not queue for one interpreter lock (bench/latency.py measures it). What they share goes through
the store and the data folder, as replicas' does (README: Outgrowing one machine).

In HTTP mode the supervisor here listens on the port and hands each connection it accepts to
the next ready process in turn, over a Unix socket of each (the connection's descriptor, as
SCM_RIGHTS). Why not SO_REUSEPORT, the processes listening on one port themselves: the kernel
spreads connections by a hash of their addresses, so a burst of 20 could land 13 and 7; and a
process that died took the connections queued for it along (reset), where here they wait in
the one backlog for the others. In Socket Mode each process opens its own connection and
Slack spreads the requests.

The supervisor starts them, starts another for one that dies (giving up on a crash loop), and
on Ctrl-C or SIGTERM stops them all and waits for them to finish what they took.
"""

from __future__ import annotations

import array
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from mimic.core.children import die_with_parent

log = logging.getLogger(__name__)
WORKER_ENV = "MIMIC_SERVE_WORKER"  # set in a worker: it serves, it does not supervise
HANDOVER_ENV = "MIMIC_SERVE_HANDOVER"  # in an HTTP worker: the descriptor it gets connections on
READY = b"ready"  # an HTTP worker's one message to the supervisor: it serves now
# More restarts than this within a minute is a crash loop (a bad token, a port taken): stop.
RESTARTS_PER_MINUTE = 3
STOP_TIMEOUT_S = 60.0
POLL_S = 0.5  # how soon the supervisor notices a dead worker, or that it must stop
HANDOVER_WAIT_S = 5.0  # the longest a connection waits for a full worker's queue


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    handover: socket.socket | None  # the supervisor's end of its Unix socket (HTTP mode)
    ready: bool = False  # it said it serves (HTTP mode)

    def serves(self) -> bool:
        """Whether it said it serves and still can (its end open), asked without waiting."""
        if self.handover is None:
            return False
        try:
            said = self.handover.recv(len(READY), socket.MSG_DONTWAIT)
        except BlockingIOError:  # nothing new to say
            return self.ready
        except OSError:
            said = b""
        self.ready = said == READY  # or b"": its end is closed, it is gone
        return self.ready


class Supervisor:
    def __init__(self, args: list[str], processes: int,
                 address: tuple[str, int] | None = None) -> None:
        """`args`: `mimic serve`'s arguments for each worker; `address`: HTTP mode's (host,
        port) to listen on (port 0: any free one)."""
        self.args, self.processes, self.address = args, processes, address
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # `workers`, between the watch loop and the dispatcher
        self.workers: list[Worker] = []
        self.restarts: list[float] = []  # when, for the last minute's count
        self.listener: socket.socket | None = None

    def _start(self) -> Worker:
        env = {**os.environ, WORKER_ENV: "1", "MIMIC_SERVE_PROCESSES": str(self.processes)}
        args, ours, theirs = list(self.args), None, None
        if self.listener is not None and self.address is not None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            env[HANDOVER_ENV] = str(theirs.fileno())
            args += ["--http", str(self.listener.getsockname()[1]), "--host", self.address[0]]
        try:
            # A session of its own: a terminal's Ctrl-C reaches the supervisor alone, which
            # stops each worker once (a second signal would cut a worker's clean stop short).
            process = subprocess.Popen(
                [sys.executable, "-m", "mimic.cli", "serve", *args], env=env,
                start_new_session=True, preexec_fn=die_with_parent,
                pass_fds=() if theirs is None else (theirs.fileno(),))
        except BaseException:
            if ours is not None:
                ours.close()
            raise
        finally:
            if theirs is not None:
                theirs.close()
        return Worker(process, ours)

    def run(self) -> int:
        """Serve until stopped; the exit status (0 when every worker stopped cleanly)."""
        def stop(_signum: int, _frame: object) -> None:
            self._stopping.set()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        dispatcher = None
        try:
            if self.address is not None:
                host, port = self.address
                self.listener = socket.create_server(
                    (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                    backlog=128)
                self.listener.settimeout(POLL_S)
                log.info("%d processes serve http://%s:%d/slack/events, connections handed "
                         "out in turn", self.processes, host, self.listener.getsockname()[1])
            with self._lock:
                self.workers = [self._start() for _ in range(self.processes)]
            if self.listener is not None:
                dispatcher = threading.Thread(target=self._dispatch, name="mimic-dispatch")
                dispatcher.start()
            while not self._stopping.wait(POLL_S):
                for i, worker in enumerate(self.workers):
                    if worker.process.poll() is None:
                        continue
                    now = time.monotonic()
                    self.restarts = [t for t in self.restarts if now - t < 60] + [now]
                    if len(self.restarts) > RESTARTS_PER_MINUTE:
                        log.error("mimic serve processes keep exiting (the last with status "
                                  "%s); stopping the others", worker.process.returncode)
                        self._stopping.set()
                        self._stop_all()
                        return 1
                    log.warning("a mimic serve process exited (status %s); starting another",
                                worker.process.returncode)
                    with self._lock:
                        self.workers[i] = self._start()
                    if worker.handover is not None:
                        worker.handover.close()
            return self._stop_all()
        finally:
            self._stopping.set()
            if dispatcher is not None:
                dispatcher.join()
            if self.listener is not None:
                self.listener.close()
            for worker in self.workers:
                if worker.handover is not None:
                    worker.handover.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _dispatch(self) -> None:
        """Accept connections until stopping; each goes to the next ready worker."""
        assert self.listener is not None
        turn = 0
        while not self._stopping.is_set():
            try:
                connection, _address = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # out of descriptors, say: the client retries
                log.warning("accepting a connection failed: %s", exc)
                self._stopping.wait(0.1)
                continue
            with connection:  # ours is closed once the worker holds its copy
                turn = self._hand(connection, turn)

    def _hand(self, connection: socket.socket, turn: int) -> int:
        """Give `connection` to a worker, the `turn`-th ready one first; the next turn."""
        with self._lock:
            workers = list(self.workers)
        # While none is ready (all starting), the connection waits in one's queue.
        ready = [w for w in workers if w.serves()] or workers
        # A worker's queue holds a few connections (net.unix.max_dgram_qlen): one that is
        # full is busy or stuck, so the next is tried; while all are, it waits a while.
        deadline = time.monotonic() + HANDOVER_WAIT_S
        while True:
            for k in range(len(ready)):
                worker = ready[(turn + k) % len(ready)]
                if worker.handover is None:
                    continue
                try:  # (socket.send_fds drops its flags on Python 3.11)
                    worker.handover.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                      array.array("i", [connection.fileno()]))],
                                            socket.MSG_DONTWAIT)
                    return turn + k + 1
                except BlockingIOError:  # its queue is full: the next one
                    continue
                except OSError:  # it died (its replacement is starting): the next one
                    worker.ready = False
            if time.monotonic() >= deadline or self._stopping.wait(0.05):
                break
        log.warning("no mimic serve process could take a connection; it is closed")
        return turn

    def _stop_all(self) -> int:
        """SIGTERM to every worker (each answers what it took, then exits 0), and wait."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        status = 0
        for worker in self.workers:
            try:
                # Killed by our SIGTERM: it was still starting (it answers it once serving).
                status |= worker.process.wait(STOP_TIMEOUT_S) not in (0, -signal.SIGTERM)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                status = 1
        return status
