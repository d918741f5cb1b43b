"""``authfilter serve``: the front-ends (SMTP proxy, milter) in one worker per core on the same
ports, signals, reload and drain.

Each worker runs the proxy's and the milter's listeners on one pipeline (one config
generation, one set of metrics).  With ``proxy.workers`` = 1 the worker is this process.
Otherwise this process is a small supervisor: it checks that every listening address can be
bound, forks the workers, restarts a worker that dies, forwards SIGHUP (after checking that
the new config loads), turns SIGTERM or SIGINT into a drain of every worker and serves
``metrics.listen`` for all of them (:class:`~authfilter.metrics.WorkersEndpoint`: one
address, the sum over the workers).
The proxy's ports are bound by each worker with SO_REUSEPORT (the kernel spreads connections
across them); each milter listener is bound once, here, and its socket shared by the workers,
which take connections lowest slot first (:mod:`authfilter.milter.acceptor`: the load fills
one worker before it spills to the next), and a restarted worker takes the same socket, so no
connection waiting in its queue is lost.

Inside a worker: SIGTERM/SIGINT drain (no new connections, transactions in progress finish
within ``proxy.drain_timeout``, idle sessions get 421), SIGHUP reloads config and policy for
new sessions without dropping any.  Messages of 256 KB and more are verified in a small
process pool (``proxy.offload_workers``) while other sessions share the worker, so a 2 MB
message does not stall them (see :data:`authfilter.engine.OFFLOAD_BYTES`).
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, Callable, Sequence

from .config import Config, ConfigError
from .memory import keep_freed_buffers
from .metrics import Metrics, WorkersEndpoint
from .milter.acceptor import AcceptorBoard
from .milter.listener import MilterListener, MilterServer, bind_milter_socket
from .milter.session import MilterLimits
from .observers import BackgroundObserver, Observer
from .policy import PolicyError
from .smtp.generation import share
from .smtp.server import ProxyServer, parse_address
from .systemd import notify

log = logging.getLogger("authfilter.serve")

ObserverFactory = Callable[[Config], list[Observer]]
RESTART_WINDOW = 30.0          # seconds; a worker dying more often than MAX_RESTARTS in it
MAX_RESTARTS = 5               # means something is wrong: stop instead of looping
# SIGUSR1: a worker has written to the supervisor's "listening" pipe (signals of one kind
# coalesce, so the pipe's bytes are what is counted).
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


class StartupError(Exception):
    pass


def load_config(path: str | None) -> Config:
    """The config with everything it names checked (:func:`authfilter.startup.load_checked`)."""
    from .startup import load_checked
    return load_checked(path)


def loop_runner(config: Config) -> Callable[[Any], int]:
    """``asyncio.run`` or ``uvloop.run``, as configured (StartupError when unavailable)."""
    if config.proxy.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.proxy.event_loop == "uvloop":
                raise StartupError("proxy.event_loop = \"uvloop\" but uvloop is not installed "
                                   "(pip install uvloop)") from None
        else:
            return uvloop.run
    return asyncio.run


def worker_count(config: Config) -> int:
    return config.proxy.workers or os.cpu_count() or 1


def make_executor(config: Config) -> Executor | None:
    """The pool for big messages.  forkserver, not fork: a forked child of a worker would keep
    the worker's listening sockets open after a drain."""
    if config.proxy.offload_workers <= 0:
        return None
    return ProcessPoolExecutor(config.proxy.offload_workers,
                               mp_context=multiprocessing.get_context("forkserver"),
                               initializer=keep_freed_buffers)


# -- one worker ----------------------------------------------------------------------------
async def run_worker(config_path: str | None, config: Config, *, workers: int, slot: int = 0,
                     observer_factory: ObserverFactory, metrics_link: socket.socket | None = None,
                     listening: Callable[[], None] = lambda: None,
                     milter_sockets: Sequence[socket.socket] | None = None,
                     acceptor_board: AcceptorBoard | None = None) -> int:
    """One worker: the proxy's and the milter's listeners on one pipeline.  ``metrics_link``
    is its end of the supervisor's metrics link (None: it serves ``metrics.listen`` itself,
    being the only process); ``listening`` is called once every listener is bound;
    ``milter_sockets``: the milter listeners' sockets the supervisor bound for all workers,
    which the worker in ``slot`` takes connections from in its turn (lowest slot first),
    telling the others on ``acceptor_board``."""
    loop = asyncio.get_running_loop()
    executor = make_executor(config)
    metrics = Metrics(standalone=metrics_link is None)
    observers = observer_factory(config)
    server = ProxyServer(config, executor=executor, workers=workers, reuse_port=workers > 1,
                         observers=observers, metrics=metrics)
    # the milter shares the proxy's config generation (so SIGHUP reaches it), metrics, timer
    milter = MilterServer(milter_listeners(config), lambda: server.generation.pipeline,
                          metrics=metrics, limits=milter_limits(config),
                          max_sessions=share(config.milter.max_sessions, workers),
                          sockets=milter_sockets, rank=slot,
                          ranks=workers, board=acceptor_board, watchdog=server.watchdog)
    endpoint = None
    try:
        await server.start()
        await milter.start()
        if metrics_link is not None:
            metrics.answer(metrics_link)
        elif config.metrics.listen:
            endpoint = metrics.start_http(config.metrics.listen)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await asyncio.gather(server.drain(0), milter.drain(0))
        return 1
    for observer in observers:
        if isinstance(observer, BackgroundObserver):
            await observer.start()
        if hasattr(observer, "buffered"):                 # the report recorder
            metrics.watch_report_backlog(lambda o=observer: o.buffered)
    stop = asyncio.Event()
    reloading: set[asyncio.Task] = set()

    async def reload() -> None:
        try:
            new = load_config(config_path)
            await server.reload(new)
        except (ConfigError, PolicyError) as exc:
            log.error("reload refused, keeping the running config:\n  %s",
                      "\n  ".join(getattr(exc, "problems", [str(exc)])))
        except Exception as exc:                     # TLS files, signing keys ...
            log.error("reload refused, keeping the running config: %s", exc)
        else:
            logging.getLogger().setLevel(new.logging.level.upper())
            log.info("config reloaded from %s", config_path or "(embedded defaults)")

    def on_hup() -> None:
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    log.info("worker %d listening on %s, relaying to %s%s", os.getpid(),
             ", ".join(f"{h}:{p} ({lc.role})" for (h, p), lc in
                       zip(server.addresses(), config.proxy.listeners)), config.proxy.upstream,
             "".join(f"; milter on {a} ({lc.role})" for a, lc in
                     zip(milter.addresses(), config.milter.listeners)))
    listening()
    if executor is not None:                          # start the pool now, not on the first big message
        loop.run_in_executor(executor, int)
    await stop.wait()
    notify("STOPPING=1")                  # only a worker that is the main process has the socket
    log.info("worker %d draining", os.getpid())
    drain_timeout = server.config.proxy.drain_timeout
    await asyncio.gather(server.drain(drain_timeout), milter.drain(drain_timeout))
    for observer in observers:
        if isinstance(observer, BackgroundObserver):
            await observer.close()
    if endpoint is not None:
        endpoint.stop()
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
    log.info("worker %d stopped", os.getpid())
    return 0


# -- the supervisor ------------------------------------------------------------------------
def check_addresses(config: Config) -> None:
    """Fail early, with the address, when a port cannot be bound (in use, no permission)."""
    tcp_milters = [lc for lc in config.milter.listeners if not lc.address.startswith("unix:")]
    for listener in [*config.proxy.listeners, *tcp_milters]:
        host, port = parse_address(listener.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise StartupError(f"cannot listen on {listener.address}: {why}") from None


def serve(config_path: str | None, config: Config, observer_factory: ObserverFactory) -> int:
    workers = worker_count(config)
    try:
        runner = loop_runner(config)
        if workers == 1:
            return runner(run_worker(config_path, config, workers=1,
                                     observer_factory=observer_factory, listening=_ready))
        check_addresses(config)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return Supervisor(config_path, config, workers, observer_factory, runner).run()


_PR_SET_PDEATHSIG = 1                 # prctl(2)


def _stop_with_parent(supervisor: int) -> None:
    """In a worker: SIGTERM (a drain) when the supervisor dies, even of SIGKILL, so that no
    worker outlives it and keeps the ports (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return                                          # not Linux: systemd stops the cgroup
    if os.getppid() != supervisor:                      # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _end_group(worker: int) -> None:
    """Stop what a worker that has exited left behind in its process group: a worker killed
    with SIGKILL cannot stop its offload pool, forkserver and resource tracker itself."""
    try:
        os.killpg(worker, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass                                            # nothing left: the usual case


def milter_listeners(config: Config) -> list[MilterListener]:
    return [MilterListener(lc.address, lc.role, lc.arc_seal, lc.socket_mode, lc.socket_group or None)
            for lc in config.milter.listeners]


def milter_limits(config: Config) -> MilterLimits:
    return MilterLimits(max_message_size=config.milter.max_message_size,
                        oversize=config.milter.oversize)


def _ready() -> None:
    notify("READY=1", f"MAINPID={os.getpid()}")


class Supervisor:
    def __init__(self, config_path: str | None, config: Config, workers: int,
                 observer_factory: ObserverFactory, runner: Callable[[Any], int]) -> None:
        self.runner = runner
        self.config_path = config_path
        self.config = config
        self.workers = workers
        self.observer_factory = observer_factory
        self.children: dict[int, int] = {}          # pid -> worker slot
        self.slot_restarts = [0] * workers
        self.restarts: list[float] = []
        self.stopping = False
        self.gave_up = False
        self.listening = 0                          # workers that said so, restarts included
        self._listening_read, self._listening_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.metrics: WorkersEndpoint | None = None

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:            # one socket per milter listener for all workers (SharedAcceptor)
            self.milter_sockets = [bind_milter_socket(lc) for lc in milter_listeners(self.config)]
            self.acceptor_board = AcceptorBoard(self.workers)
            self.milter_inodes = {lc.address[5:]: os.stat(lc.address[5:]).st_ino
                                  for lc in self.config.milter.listeners
                                  if lc.address.startswith("unix:")}
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            return 1
        try:
            return self._supervise()
        finally:
            self._remove_milter_sockets()

    def _remove_milter_sockets(self) -> None:
        """The unix socket files this supervisor bound, unless something else replaced them."""
        for sock in self.milter_sockets:
            if sock is not None:
                sock.close()
        for path, inode in self.milter_inodes.items():
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass

    def _supervise(self) -> int:
        if self.config.metrics.listen:        # its thread starts with the signals blocked
            try:
                self.metrics = WorkersEndpoint(self.config.metrics.listen, self.slot_restarts)
            except OSError as exc:
                log.error("cannot listen: %s", exc)
                return 1
        for slot in range(self.workers):
            self._spawn(slot)
        log.info("supervisor %d started %d workers", os.getpid(), self.workers)
        deadline: float | None = None
        while self.children:
            timeout = 1.0 if deadline is None else max(0.05, min(1.0, deadline - time.monotonic()))
            info = signal.sigtimedwait(SUPERVISOR_SIGNALS, timeout)
            if info is not None and info.si_signo == signal.SIGUSR1:
                self._worker_listening()
            elif info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT) \
                    and not self.stopping:
                notify("STOPPING=1")
                self.stopping = True
                deadline = time.monotonic() + self.config.proxy.drain_timeout + 10
                self._signal_all(signal.SIGTERM)
            elif info is not None and info.si_signo == signal.SIGHUP:
                self._reload()
            self._reap()
            if deadline is not None and time.monotonic() > deadline:
                log.error("workers did not stop in time; killing them")
                self._signal_all(signal.SIGKILL)
                deadline = None
        if self.metrics is not None:
            self.metrics.stop()
        return 1 if self.gave_up else 0

    def _worker_listening(self) -> None:
        """Ready for the service manager once as many workers as configured listen."""
        before = self.listening
        try:
            while chunk := os.read(self._listening_read, 64):
                self.listening += len(chunk)
        except BlockingIOError:
            pass
        if before < self.workers <= self.listening:
            _ready()

    def _say_listening(self, supervisor: int) -> None:
        """In a worker: one byte into the pipe, then the signal that wakes the supervisor."""
        os.write(self._listening_write, b".")
        os.kill(supervisor, signal.SIGUSR1)

    def _spawn(self, slot: int) -> None:
        supervisor = os.getpid()
        link = self.metrics.link() if self.metrics is not None else None
        pid = os.fork()
        if pid == 0:                                  # the worker
            code = 1
            try:
                os.setpgid(0, 0)          # its own group: its helpers go with it (_end_group)
                _stop_with_parent(supervisor)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                os.environ.pop("NOTIFY_SOCKET", None)     # the supervisor speaks for the service
                metrics_link = self.metrics.in_worker(link) if link is not None else None
                code = self.runner(run_worker(self.config_path, self.config, workers=self.workers,
                                              slot=slot, observer_factory=self.observer_factory,
                                              metrics_link=metrics_link,
                                              listening=lambda: self._say_listening(supervisor),
                                              milter_sockets=self.milter_sockets,
                                              acceptor_board=self.acceptor_board))
            except BaseException:
                log.exception("worker crashed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot
        if link is not None:
            self.metrics.started(slot, link)

    def _signal_all(self, signo: int) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass

    def _reload(self) -> None:
        try:
            self.config = load_config(self.config_path)
        except (ConfigError, PolicyError) as exc:
            log.error("reload refused, keeping the running config:\n  %s", "\n  ".join(exc.problems))
            return
        log.info("reloading %d workers", len(self.children))
        self._signal_all(signal.SIGHUP)

    def _reap(self) -> None:
        """Collect exited workers; restart them unless stopping."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                break
            if pid == 0:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            _end_group(pid)
            if self.metrics is not None:
                self.metrics.exited(slot)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                continue
            log.error("worker %d exited with %d", pid, code)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error("workers keep failing; stopping")
                self.stopping = self.gave_up = True
                self._signal_all(signal.SIGTERM)
                continue
            self.slot_restarts[slot] += 1
            self._spawn(slot)
