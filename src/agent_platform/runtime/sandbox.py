"""Process sandbox for model-written code (worker side).

smolagents' ``LocalPythonExecutor`` is an AST interpreter, not a security boundary.  Here every
execution gets its own child process (forked by a pre-warmed *zygote*, see
:mod:`.sandbox_child` for the isolation layers) and the interpreter runs there.  The worker keeps
the tools: the child only holds proxies whose calls come back over a framed socket
(:mod:`.sandbox_protocol`) and are served by :class:`SandboxExecutor` while ``__call__`` waits.

Usage::

    pool = SandboxPool(limits=SandboxLimits(), authorized_imports=["math"])
    pool.start()                       # zygote up; pool.isolation_level == "netns"
    executor = pool.spawn(execution_id="ex-1")
    executor.send_tools(tools)         # tools stay here
    executor.send_variables({"x": 1})  # JSON values only
    out = executor("y = x + 1\\nprint(y)")
    executor.close()
    pool.stop()

``pool.request(...)`` is ``spawn`` without waiting for the zygote: the child is taken at the
first call (the worker asks before the first model call, so the hand-over overlaps it).

Errors: an error in the model's code raises smolagents' ``InterpreterError`` (like
``LocalPythonExecutor``); a dead child raises :class:`SandboxCrashed`, the wall-clock limit
:class:`SandboxTimeout`, :meth:`SandboxExecutor.kill` :class:`SandboxKilled`.  After one of those
the sandbox is finished: every later call raises the same error again, and
:attr:`SandboxExecutor.terminal_error` is set.  Note that ``CodeAgent`` catches *every*
``Exception`` an executor raises and feeds its message back to the model, so the runner should
check ``terminal_error`` (e.g. in a step callback) and stop the agent.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

from smolagents.default_tools import FinalAnswerTool
from smolagents.local_python_executor import CodeOutput, InterpreterError, PythonExecutor
from smolagents.tools import Tool

from agent_platform.runtime import sandbox_protocol as proto

logger = logging.getLogger(__name__)

ISOLATION_NETNS = "netns"
ISOLATION_SOCKET_BLOCKED = "socket-blocked"
ISOLATION_NOT_STARTED = "not-started"
_ISOLATION_CHOICES = ("auto", ISOLATION_NETNS, ISOLATION_SOCKET_BLOCKED)

#: Environment of the zygote and the children (``HOME``/``TMPDIR`` are set per child).  Nothing
#: is ever copied from the worker's ``os.environ``.
DEFAULT_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

#: Directories replaced by an empty tmpfs in each child's mount namespace.
DEFAULT_HIDE_PATHS: tuple[str, ...] = (
    "/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue",
    "/root", "/home", "/mnt", "/media", "/srv",
)  # fmt: skip

#: Children run as ``uid_base + n`` (one uid per sandbox) when the worker is root.
DEFAULT_UID_BASE = 2_000_000_000
DEFAULT_UID_COUNT = 1_000_000

_BASE_PREFIX = "agent-sandbox-"
_LOCK_NAME = ".pool.lock"

_HERE = os.path.dirname(os.path.abspath(__file__))
_BOOT = """\
import importlib.util, sys
def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
_load("agent_platform_sandbox_protocol", {protocol!r})
_load("agent_platform_sandbox_child", {child!r}).zygote_main(sys.argv[1:])
"""


# --------------------------------------------------------------------------------------------
# Errors and limits
# --------------------------------------------------------------------------------------------


class SandboxError(Exception):
    """The sandbox itself failed (not the model's code).  Deliberately not an ``AgentError``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SandboxCrashed(SandboxError):
    """The child died (memory/CPU limit, crash, protocol violation, pool stopped...)."""


class SandboxTimeout(SandboxError):
    """An executor call exceeded ``step_timeout_s``; the child was killed."""


class SandboxKilled(SandboxError):
    """:meth:`SandboxExecutor.kill` was called (cancellation)."""


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 512 * 2**20  # RLIMIT_AS
    cpu_seconds: int = 60  # RLIMIT_CPU (whole child lifetime)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_file_bytes: int = 10 * 2**20  # RLIMIT_FSIZE
    max_output_bytes: int = 64 * 1024  # captured prints / observation returned
    max_tool_calls: int = 100  # per execution
    max_tool_result_bytes: int = 256 * 1024
    step_timeout_s: float = 60  # wall clock per executor call
    # additions
    max_final_answer_bytes: int = 2**20  # final_answer value returned (JSON size)
    max_tool_args_bytes: int = 256 * 1024  # one tool call's arguments (frame size)
    max_disk_bytes: int = 64 * 2**20  # size of the child's private tmpfs work dir

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"SandboxLimits.{f.name} must be > 0")

    @property
    def max_child_frame_bytes(self) -> int:
        """Largest frame the worker accepts from a child."""
        result = 2 * self.max_output_bytes + max(self.max_final_answer_bytes, self.max_output_bytes)
        return result + self.max_tool_args_bytes + 64 * 1024


# --------------------------------------------------------------------------------------------
# Pool
# --------------------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("event", "fds", "msg")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.msg: dict[str, Any] | None = None
        self.fds: list[int] = []


class _Zygote:
    """One running zygote process and its control channel."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, thread: Any) -> None:
        self.proc = proc
        self.sock = sock
        self.launcher = thread
        self.reader: threading.Thread | None = None
        self.alive = True
        self.hello: dict[str, Any] | None = None
        self.hello_event = threading.Event()
        self.send_lock = threading.Lock()


class SandboxPool:
    """Zygote/fork-server that hands out one fresh sandboxed child per execution."""

    def __init__(
        self,
        *,
        limits: SandboxLimits,
        authorized_imports: list[str],
        env_allowlist: dict[str, str] | None = None,
        isolation: str = "auto",
        prefork: int = 4,
        base_dir: str | None = None,
        hide_paths: tuple[str, ...] | list[str] = DEFAULT_HIDE_PATHS,
        uid_base: int = DEFAULT_UID_BASE,
        uid_count: int = DEFAULT_UID_COUNT,
        spawn_timeout_s: float = 10.0,
        start_timeout_s: float = 60.0,
        _allow_raw_exec: bool = False,
    ) -> None:
        if isolation not in _ISOLATION_CHOICES:
            raise ValueError(f"isolation must be one of {_ISOLATION_CHOICES}, not {isolation!r}")
        missing = [
            imp
            for imp in authorized_imports
            if "*" not in imp and find_spec(imp.split(".")[0]) is None
        ]
        if missing:
            raise InterpreterError(f"Non-installed authorized modules: {', '.join(missing)}")
        self.limits = limits
        self.authorized_imports = list(authorized_imports)
        env = dict(DEFAULT_ENV)
        env.update({str(k): str(v) for k, v in (env_allowlist or {}).items()})
        self.env = env
        self.isolation = isolation
        self.prefork = prefork
        self._base_dir_parent = base_dir
        self.hide_paths = list(hide_paths)
        self.uid_base = uid_base
        self.uid_count = uid_count
        self.spawn_timeout_s = spawn_timeout_s
        self.start_timeout_s = start_timeout_s
        self._allow_raw_exec = _allow_raw_exec
        self._lock = threading.RLock()
        self._cond = threading.Condition(threading.Lock())
        self._zygote: _Zygote | None = None
        self._base_dir: str | None = None
        self._lock_fd: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._exits: dict[int, dict[str, Any]] = {}
        self._reaped: set[int] = set()
        self._tracked: set[int] = set()
        self._live: weakref.WeakValueDictionary[int, SandboxExecutor] = (
            weakref.WeakValueDictionary()
        )
        self._isolation_level = ISOLATION_NOT_STARTED
        self._layers: dict[str, Any] = {}
        self._started_once = False
        self._stopped = False  # stop() was called: spawn() must not restart the zygote

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the zygote (pre-imports smolagents and the interpreter).  Idempotent."""
        with self._lock:
            self._stopped = False
            z = self._zygote
            if z is not None and z.alive:
                return
            if z is not None:  # the zygote died: clean up and start a new one
                self._stop_locked()
            self._start_locked()
        logger.info(
            "sandbox pool started: isolation=%s layers=%s", self._isolation_level, self._layers
        )

    def _start_locked(self) -> None:
        _sweep_stale_base_dirs(self._base_dir_parent or tempfile.gettempdir())
        base = tempfile.mkdtemp(prefix=_BASE_PREFIX, dir=self._base_dir_parent)
        os.chmod(base, 0o711)
        # Held for the pool's life: a base dir whose lock is free belongs to a dead worker.
        self._lock_fd = os.open(os.path.join(base, _LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._base_dir = base
        parent_sock, zygote_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        boot = _BOOT.format(
            protocol=os.path.join(_HERE, "sandbox_protocol.py"),
            child=os.path.join(_HERE, "sandbox_child.py"),
        )
        argv = [sys.executable, "-I", "-B", "-c", boot, str(zygote_sock.fileno()), str(os.getpid())]
        env = {**self.env, "HOME": base, "TMPDIR": base}
        launched = threading.Event()
        box: dict[str, Any] = {}

        def launcher() -> None:
            # PR_SET_PDEATHSIG fires when the *thread* that forked the zygote exits, so the
            # zygote is started (and waited for) by this thread, which lives as long as it does.
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=base,
                    pass_fds=(zygote_sock.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except BaseException as e:
                box["error"] = e
                launched.set()
                return
            box["proc"] = proc
            launched.set()
            proc.wait()

        thread = threading.Thread(target=launcher, name="sandbox-zygote", daemon=True)
        thread.start()
        launched.wait()
        zygote_sock.close()
        if "error" in box:
            parent_sock.close()
            shutil.rmtree(base, ignore_errors=True)
            raise SandboxError(f"cannot start the sandbox zygote: {box['error']}")
        z = _Zygote(box["proc"], parent_sock, thread)
        self._zygote = z
        z.reader = threading.Thread(
            target=self._read_control, args=(z,), name="sandbox-zygote-reader", daemon=True
        )
        z.reader.start()
        config = {
            "limits": dataclasses.asdict(self.limits),
            "authorized_imports": self.authorized_imports,
            "preload": [imp for imp in self.authorized_imports if "*" not in imp],
            "env": self.env,
            "base_dir": base,
            "isolation": self.isolation,
            "prefork": self.prefork,
            "hide_paths": self.hide_paths,
            "uid_base": self.uid_base,
            "uid_count": self.uid_count,
            "allow_raw_exec": self._allow_raw_exec,
            # same import path as the worker (``-I`` ignores PYTHONPATH)
            "sys_path": [p for p in sys.path if p and os.path.isabs(p)],
        }
        self._send_control(z, {"op": "config", "config": config})
        if not z.hello_event.wait(self.start_timeout_s) or z.hello is None:
            self._stop_locked()
            raise SandboxError("the sandbox zygote did not start")
        hello = z.hello
        self._isolation_level = hello["isolation_level"]
        self._layers = dict(hello.get("layers", {}))
        if int(hello.get("threads", 1)) > 1:
            logger.warning("sandbox zygote runs %s threads: forking it is unsafe", hello["threads"])
        if hello.get("preload_failed"):
            logger.warning("sandbox zygote could not pre-import %s", hello["preload_failed"])
        if self.isolation == ISOLATION_NETNS and self._isolation_level != ISOLATION_NETNS:
            errors = self._layers.get("errors", {})
            self._stop_locked()
            raise SandboxError(f"isolation 'netns' is not available here: {errors}")
        if not self._started_once:
            self._started_once = True
            atexit.register(_stop_at_exit, weakref.ref(self))

    def stop(self) -> None:
        """Kill the zygote and every live child (the zygote reaps them), remove temp dirs."""
        with self._lock:
            self._stopped = True
            self._stop_locked()

    def _stop_locked(self) -> None:
        z = self._zygote
        if z is None:
            return
        with contextlib.suppress(Exception):
            self._send_control(z, {"op": "shutdown"})
        z.launcher.join(timeout=5)
        if z.launcher.is_alive():
            with contextlib.suppress(OSError):
                z.proc.kill()
            z.launcher.join(timeout=5)
        with contextlib.suppress(OSError):
            z.sock.shutdown(socket.SHUT_RDWR)
        z.sock.close()
        if z.reader is not None:
            z.reader.join(timeout=5)
        z.alive = False
        self._zygote = None
        for ex in list(self._live.values()):
            ex._pool_stopped()
        self._live.clear()
        with self._cond:
            self._exits.clear()
            self._reaped.clear()
            self._tracked.clear()
            self._cond.notify_all()
        if self._base_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._isolation_level = ISOLATION_NOT_STARTED

    def __enter__(self) -> SandboxPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection ----------------------------------------------------------------------
    @property
    def isolation_level(self) -> str:
        """``"netns"`` (private network namespace per child) or ``"socket-blocked"`` (socket
        creation refused inside the child only); ``"not-started"`` before :meth:`start`."""
        return self._isolation_level

    @property
    def isolation_details(self) -> dict[str, Any]:
        return dict(self._layers)

    @property
    def zygote_pid(self) -> int | None:
        z = self._zygote
        return z.proc.pid if z is not None and z.alive else None

    @property
    def running(self) -> bool:
        z = self._zygote
        return z is not None and z.alive

    def live_pids(self) -> list[int]:
        return [ex.pid for ex in list(self._live.values()) if not ex.closed]

    def health(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "isolation_level": self.isolation_level,
            "layers": self.isolation_details,
            "zygote_pid": self.zygote_pid,
            "live_sandboxes": len(self.live_pids()),
        }

    # -- control channel --------------------------------------------------------------------
    def _send_control(self, z: _Zygote, msg: dict[str, Any]) -> None:
        data = proto.encode_frame(msg, max_frame=proto.MAX_CONTROL_FRAME_BYTES)
        with z.send_lock:
            z.sock.sendall(data)

    def _read_control(self, z: _Zygote) -> None:
        fd_space = socket.CMSG_SPACE(4 * 4)
        while True:
            try:
                data, anc, _flags, _ = z.sock.recvmsg(
                    proto.MAX_CONTROL_FRAME_BYTES, fd_space, socket.MSG_CMSG_CLOEXEC
                )
            except OSError:
                break
            fds: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
                    fds.extend(arr)
            if not data:
                _close_fds(fds)
                break
            try:
                msg = proto.decode_datagram(data)
            except proto.ProtocolError:
                _close_fds(fds)
                continue
            self._dispatch(z, msg, fds)
        z.alive = False
        z.hello_event.set()
        with self._cond:
            pending = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for slot in pending:
            slot.event.set()

    def _dispatch(self, z: _Zygote, msg: dict[str, Any], fds: list[int]) -> None:
        op = msg["op"]
        if op == "hello":
            z.hello = msg
            z.hello_event.set()
        elif op in ("spawned", "spawn_error"):
            with self._cond:
                slot = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
                if slot is not None and op == "spawned":
                    self._tracked.add(msg["pid"])
            if slot is None:  # the requester gave up: discard the child
                _close_fds(fds)
                if op == "spawned":
                    with contextlib.suppress(OSError):
                        self._send_control(z, {"op": "release", "pid": msg["pid"], "reply": False})
                return
            slot.msg, slot.fds = msg, fds
            slot.event.set()
        elif op == "exited":
            with self._cond:
                if msg.get("pid") in self._tracked:
                    self._exits[msg["pid"]] = msg
                    self._cond.notify_all()
        elif op == "reaped":
            with self._cond:
                pid = msg.get("pid")
                if pid in self._tracked:
                    self._tracked.discard(pid)
                    self._exits.pop(pid, None)
                    self._reaped.add(pid)
                    self._cond.notify_all()
        elif op == "log":
            logger.warning("sandbox zygote: %s", msg.get("message"))

    def _wait_exit(self, z: _Zygote, pid: int, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not z.alive:
                    return None
                self._cond.wait(remaining)
            return self._exits[pid]

    def _release(self, z: _Zygote, pid: int, *, wait: bool) -> None:
        """Tell the zygote that forked ``pid`` to kill what is left of it and reap it; with
        ``wait``, wait until it has (otherwise the zygote sends no reply at all)."""
        if not z.alive:
            return
        if not wait:
            with self._cond:
                self._tracked.discard(pid)
                self._exits.pop(pid, None)
        try:
            self._send_control(z, {"op": "release", "pid": pid, "reply": wait})
        except OSError:
            return
        if not wait:
            return
        deadline = time.monotonic() + 5
        with self._cond:
            while pid not in self._reaped:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not z.alive:
                    break
                self._cond.wait(remaining)
            self._reaped.discard(pid)

    # -- spawning ---------------------------------------------------------------------------
    def spawn(self, *, execution_id: str) -> SandboxExecutor:
        """A fresh sandbox for one execution (never reused), its child already handed over.
        Thread-safe; well under a ms when a pre-forked child is ready, a fork (~1-3 ms)
        otherwise.  Starts the pool on first use and restarts a zygote that died, but not a
        pool that was ``stop()``-ped."""
        executor = self.request(execution_id=execution_id)
        executor.wait_child()
        return executor

    def request(self, *, execution_id: str) -> SandboxExecutor:
        """Like :meth:`spawn`, without waiting for the zygote's reply: the executor takes its
        child when first used (at most ``spawn_timeout_s`` after this call; tools and
        variables sent before are queued).  An execution asks for its sandbox before its
        first model call, so the hand-over happens while the model answers, not after."""
        z = self._zygote
        if z is None or not z.alive:
            if self._stopped:
                raise SandboxCrashed("sandbox pool is stopped")
            self.start()  # first use, or the zygote died: (re)start it
            z = self._zygote
            assert z is not None
        req_id = next(self._ids)
        slot = _Pending()
        with self._cond:
            self._pending[req_id] = slot
        try:
            self._send_control(z, {"op": "spawn", "id": req_id, "execution_id": execution_id})
        except OSError as e:
            self._withdraw(req_id)
            raise SandboxCrashed(f"sandbox zygote is not running: {e}") from None
        handle = _ChildHandle(
            self, z, req_id, slot, deadline=time.monotonic() + self.spawn_timeout_s
        )
        return SandboxExecutor(pool=self, handle=handle, execution_id=execution_id)

    def _withdraw(self, req_id: int) -> bool:
        """Give up a spawn request.  True if its reply had not come: the reader then discards
        the child when it does.  False if it came (or is being delivered): it is the
        requester's to take."""
        with self._cond:
            return self._pending.pop(req_id, None) is not None


def _sweep_stale_base_dirs(parent: str, *, min_age_s: float = 60.0) -> None:
    """Remove base dirs left by workers that died without ``stop()`` (their lock is free)."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for name in entries:
        if not name.startswith(_BASE_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if time.time() - st.st_mtime < min_age_s:  # may be a pool starting right now
                continue
            fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live pool holds it
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def _stop_at_exit(ref: weakref.ref[SandboxPool]) -> None:
    pool = ref()
    if pool is not None:
        with contextlib.suppress(Exception):
            pool.stop()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# --------------------------------------------------------------------------------------------
# Executor
# --------------------------------------------------------------------------------------------


class _ChildHandle:
    """OS resources of one child, from the spawn request to the release; shared with a
    ``weakref.finalize`` (no executor reference).  Until :meth:`take` has the zygote's reply
    there is no child here yet, only the request."""

    def __init__(
        self, pool: SandboxPool, zygote: _Zygote, req_id: int, slot: _Pending, *, deadline: float
    ) -> None:
        self.pool = pool
        self.zygote = zygote  # the one that forked it: a pid means nothing to another zygote
        self.req_id = req_id
        self.slot = slot
        self.deadline = deadline  # time.monotonic() by which the zygote must have answered
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.pidfd = -1
        self.workdir = ""
        self.lock = threading.Lock()
        self.answered = False  # the reply was taken (a child, or why there is none)
        self.closed = False
        self.closed_by_release = False
        self.pool_stopped = False

    def take(self) -> None:
        """Wait for the zygote's reply and take the child.  Raises ``SandboxCrashed``."""
        slot = self.slot
        if not slot.event.wait(max(0.0, self.deadline - time.monotonic())):
            if self.pool._withdraw(self.req_id):
                with self.lock:
                    self.answered = True
                raise SandboxCrashed(
                    f"spawning a sandbox took more than {self.pool.spawn_timeout_s:g} s"
                )
            slot.event.wait()  # it came as we gave up: the reader is handing it over
        with self.lock:
            if self.closed:
                raise SandboxCrashed("sandbox closed before its child was handed over")
            self._adopt_locked()

    def _adopt_locked(self) -> None:
        if self.answered:
            if self.pid is None:
                raise SandboxCrashed("no sandbox child was handed over")
            return
        self.answered = True
        msg, fds = self.slot.msg, self.slot.fds
        if msg is None:
            raise SandboxCrashed(
                "sandbox pool stopped" if self.pool._stopped else "sandbox zygote died"
            )
        if msg["op"] != "spawned" or len(fds) != 2:
            _close_fds(fds)
            raise SandboxCrashed(f"cannot spawn a sandbox: {msg.get('error', 'bad reply')}")
        self.pid = int(msg["pid"])
        self.sock = socket.socket(fileno=fds[0])
        self.pidfd = fds[1]
        self.workdir = str(msg["workdir"])

    def kill(self) -> None:
        with self.lock:
            requested_only = self.pid is None
        if requested_only:  # nothing runs yet: give the request up
            self.close(wait=False)
            return
        with self.lock:
            if self.pidfd < 0:
                return
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            # The zygote does not reap the child before we release it, so its pid (= its
            # process group id) cannot have been recycled: killpg is safe until then (if that
            # zygote died, the child was re-parented and may be gone: only the pidfd is safe).
            if not self.pool_stopped and not self.closed_by_release and self.zygote.alive:
                with contextlib.suppress(OSError):
                    os.killpg(self.pid, signal.SIGKILL)

    def close(self, wait: bool = True) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if self.pid is None:
                if not self.answered and self.pool._withdraw(self.req_id):
                    self.answered = True
                    self.slot.event.set()  # a waiting `take` finds nothing to take
                    return  # the reader discards the child when it comes
                if not self.answered:  # it came: take it, to release it
                    self.slot.event.wait()
                    with contextlib.suppress(SandboxCrashed):
                        self._adopt_locked()
                if self.pid is None:
                    return
        pid, sock = self.pid, self.sock
        assert sock is not None
        # A live zygote kills what is left of the child's process group when released, then
        # reaps it and unmounts and removes its work dir; without one, we kill, and only the
        # empty directory it made is left for us to remove. Not waiting, we leave the kill to
        # the zygote too: a signal sent from here is a system call made holding the GIL, and
        # the kernel may run the dying child's exit before giving the CPU back.
        zygote_cleans_up = not self.pool_stopped and self.zygote.alive
        if wait or not zygote_cleans_up:
            self.kill()
        if not self.pool_stopped:
            self.pool._release(self.zygote, pid, wait=wait)
        self.closed_by_release = True
        with contextlib.suppress(OSError):
            sock.close()  # an idle child reads end-of-file and exits by itself
        with self.lock:
            if self.pidfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.pidfd)
                self.pidfd = -1
        if not zygote_cleans_up:
            shutil.rmtree(self.workdir, ignore_errors=True)


class SandboxExecutor(PythonExecutor):
    """A smolagents ``PythonExecutor`` whose interpreter lives in a sandboxed child process."""

    def __init__(self, *, pool: SandboxPool, handle: _ChildHandle, execution_id: str) -> None:
        self.pool = pool
        self.limits = pool.limits
        self.execution_id = execution_id
        #: smolagents' CodeAgent reads ``state["_print_outputs"]`` when a call raises.
        self.state: dict[str, Any] = {"_print_outputs": ""}
        self.tool_calls = 0
        self.terminal_error: SandboxError | None = None
        self._handle = handle
        self._sock: socket.socket | None = None  # the child's channel, once handed over
        self._queued: list[bytes] = []  # frames sent before that
        self._tools: dict[str, Any] = {}
        self._call_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._kill_reason: str | None = None
        self._ready: dict[str, Any] | None = None
        self._max_in = self.limits.max_child_frame_bytes
        self._finalizer = weakref.finalize(self, handle.close, False)

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group), once handed over."""
        return self._handle.pid

    @property
    def workdir(self) -> str:
        return self._handle.workdir

    # -- PythonExecutor API -----------------------------------------------------------------
    def send_tools(self, tools: dict[str, Tool]) -> None:
        specs = []
        for name, tool in tools.items():
            spec: dict[str, Any] = {
                "name": str(name),
                "description": str(getattr(tool, "description", "") or ""),
                "inputs": _jsonable(getattr(tool, "inputs", {}) or {}),
                "output_type": str(getattr(tool, "output_type", "any") or "any"),
            }
            if name == "final_answer" and type(tool) is FinalAnswerTool:
                spec["local"] = True  # pure: run it in the child, no round trip
            specs.append(spec)
        self._tools = dict(tools)
        with self._call_lock:
            self._send({"op": "tools", "tools": specs}, self._default_deadline())

    def send_variables(self, variables: dict[str, Any]) -> None:
        bad = []
        for key, value in variables.items():
            try:
                proto.dumps(value)
            except (TypeError, ValueError, RecursionError):
                bad.append(f"{key!r} ({type(value).__name__})")
        if bad:
            raise TypeError(
                "sandbox variables must be JSON-serialisable; not: " + ", ".join(bad[:10])
            )
        with self._call_lock:
            try:
                self._send({"op": "vars", "vars": dict(variables)}, self._default_deadline())
            except proto.FrameTooLarge as e:
                raise ValueError(f"sandbox variables are too large: {e}") from None

    def __call__(self, code_action: str) -> CodeOutput:
        return self._run({"op": "exec", "code": code_action})

    # -- lifecycle --------------------------------------------------------------------------
    def kill(self, reason: str = "cancelled") -> None:
        """SIGKILL the child's process group now; a blocked ``__call__`` raises SandboxKilled."""
        with self._state_lock:
            if self._kill_reason is None and self.terminal_error is None:
                self._kill_reason = reason
                self.terminal_error = SandboxKilled(reason)
        self._handle.kill()

    def wait_child(self) -> None:
        """Wait until the zygote has handed the child over (the first use waits anyway).
        Raises ``SandboxCrashed`` when it cannot."""
        with self._call_lock:
            self._check_usable()
            self._take_child()

    def close(self, wait: bool = True) -> None:
        """End the child: the zygote kills what is left of it, reaps it and removes its temp
        dir.

        ``wait=False`` returns at once (a datagram to the zygote and the socket closed,
        microseconds): what an execution does, so that ending sandboxes never queues behind a
        busy zygote. ``wait=True`` also kills the child from here and waits until the zygote
        has reaped it.  Idempotent."""
        with self._state_lock:
            if self.terminal_error is None:
                self.terminal_error = SandboxCrashed("sandbox closed")
        self._finalizer.detach()
        self._handle.close(wait=wait)
        self.pool._live.pop(self.pid, None)

    cleanup = close  # smolagents' agents call executor.cleanup() on __exit__

    def __enter__(self) -> SandboxExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._handle.closed

    @property
    def isolation(self) -> dict[str, Any]:
        """The isolation layers the child reports once set up (waits for it)."""
        with self._call_lock:
            self._check_usable()
            self._take_child()
            deadline = self._default_deadline()
            while self._ready is None:
                self._handle_frame(self._recv(deadline), deadline)
        return dict(self._ready.get("isolation", {}))

    def _pool_stopped(self) -> None:
        with self._state_lock:
            if self.terminal_error is None:
                self.terminal_error = SandboxCrashed("sandbox pool stopped")
        self._handle.pool_stopped = True
        self._handle.kill()

    # -- test hook --------------------------------------------------------------------------
    def _raw_exec(self, code: str) -> CodeOutput:
        """Run raw Python with ``exec`` in the child (models an interpreter escape).  Only
        works for pools created with ``_allow_raw_exec=True`` (tests)."""
        if not self.pool._allow_raw_exec:
            raise PermissionError("raw exec is disabled for this pool")
        return self._run({"op": "exec_raw", "code": code})

    # -- internals --------------------------------------------------------------------------
    def _default_deadline(self) -> float:
        return time.monotonic() + self.limits.step_timeout_s

    def _check_usable(self) -> None:
        err = self.terminal_error
        if err is not None:
            raise type(err)(err.reason)

    def _fail(self, err: SandboxError) -> SandboxError:
        with self._state_lock:
            if self.terminal_error is None:
                self.terminal_error = err
            err = self.terminal_error
        self._handle.kill()
        return type(err)(err.reason)

    def _take_child(self) -> None:
        """Under ``_call_lock``: take the child from the zygote's reply (once), then send it
        what was queued for it."""
        if self._sock is not None:
            return
        try:
            self._handle.take()
        except SandboxCrashed as e:
            raise self._fail(e) from None
        self._sock = self._handle.sock
        assert self.pid is not None
        self.pool._live[self.pid] = self
        queued, self._queued = self._queued, []
        for data in queued:
            self._send_encoded(data, self._default_deadline())

    def _run(self, request: dict[str, Any]) -> CodeOutput:
        with self._call_lock:
            self._check_usable()
            self._take_child()
            deadline = self._default_deadline()
            try:
                self._send(request, deadline)
            except proto.FrameTooLarge as e:
                raise InterpreterError(f"code is too large for the sandbox: {e}") from None
            while True:
                msg = self._recv(deadline)
                result = self._handle_frame(msg, deadline)
                if result is not None:
                    return result

    def _handle_frame(self, msg: dict[str, Any], deadline: float) -> CodeOutput | None:
        op = msg["op"]
        if op == "ready":
            self._ready = msg
            return None
        if op == "tool_call":
            reply = self._serve_tool_call(msg)
            if self._kill_reason is not None:
                raise self._fail(SandboxKilled(self._kill_reason))
            if time.monotonic() >= deadline:
                raise self._fail(self._timeout_error())
            self._send(reply, deadline)
            return None
        if op == "result":
            logs = str(msg.get("logs") or "")
            self.state["_print_outputs"] = logs
            return CodeOutput(
                output=msg.get("output"),
                logs=logs,
                is_final_answer=bool(msg.get("is_final_answer")),
            )
        if op == "error":
            self.state["_print_outputs"] = str(msg.get("logs") or "")
            raise InterpreterError(str(msg.get("message") or "code execution failed"))
        if op == "setup_failed":
            raise self._fail(SandboxCrashed(f"sandbox setup failed: {msg.get('error')}"))
        raise self._fail(SandboxCrashed(f"protocol violation: unexpected message {op!r}"))

    def _timeout_error(self) -> SandboxTimeout:
        return SandboxTimeout(f"exceeded {self.limits.step_timeout_s:g} s")

    def _send(self, msg: dict[str, Any], deadline: float) -> None:
        self._check_usable()
        data = proto.encode_frame(msg)
        if self._sock is None:  # not handed over yet: it gets this first thing
            self._queued.append(data)
            return
        self._send_encoded(data, deadline)

    def _send_encoded(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        try:
            proto.send_encoded(self._sock, data, deadline=deadline)
        except TimeoutError:
            raise self._fail(self._timeout_error()) from None
        except OSError:
            raise self._death_error() from None

    def _recv(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        try:
            return proto.recv_frame(self._sock, max_frame=self._max_in, deadline=deadline)
        except TimeoutError:
            raise self._fail(self._timeout_error()) from None
        except proto.ChannelClosed:
            raise self._death_error() from None
        except proto.ProtocolError as e:
            raise self._fail(SandboxCrashed(f"protocol violation: {e}")) from None
        except OSError:
            raise self._death_error() from None

    def _death_error(self) -> SandboxError:
        """The channel broke: say why the child died."""
        if self._kill_reason is not None:
            return self._fail(SandboxKilled(self._kill_reason))
        if self.terminal_error is not None:
            return self._fail(self.terminal_error)
        assert self.pid is not None  # the channel exists only once the child does
        status = self.pool._wait_exit(self._handle.zygote, self.pid, timeout=2.0)
        reason = _describe_exit(status, self.limits)
        if status is None and not self._handle.zygote.alive:
            reason += " (the sandbox zygote is gone)"
        return self._fail(SandboxCrashed(reason))

    def _serve_tool_call(self, msg: dict[str, Any]) -> dict[str, Any]:
        name, args, kwargs = msg.get("name"), msg.get("args", []), msg.get("kwargs", {})
        limit = self.limits.max_tool_result_bytes

        def refuse(text: str) -> dict[str, Any]:
            return {"op": "tool_result", "ok": False, "error": proto.fit_text(text, limit)[0]}

        if not isinstance(name, str) or name not in self._tools:
            return refuse(f"tool {name!r} is not enabled for this execution")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            return refuse(f"malformed call to tool {name!r}")
        if self.tool_calls >= self.limits.max_tool_calls:
            return refuse(
                f"tool call limit reached: at most {self.limits.max_tool_calls} tool calls "
                "per execution"
            )
        self.tool_calls += 1
        try:
            result = self._tools[name](*args, **kwargs)
        except Exception as e:
            return refuse(f"{type(e).__name__}: {e}")
        return {"op": "tool_result", "ok": True, "value": _encode_tool_result(result, limit)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _encode_tool_result(result: Any, limit: int) -> Any:
    """JSON value of at most ``limit`` bytes; non-JSON values become ``str``; a too large
    structured result degrades to its truncated JSON text."""
    try:
        text = json.dumps(result, ensure_ascii=False, default=str, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        try:
            text = json.dumps(str(result), ensure_ascii=False)
        except Exception:
            text = json.dumps(f"<unserialisable {type(result).__name__}>")
        result = json.loads(text)
    if len(text.encode("utf-8")) <= limit:
        return json.loads(text)
    if isinstance(result, str):
        return proto.fit_text(result, limit)[0]
    return proto.fit_text(text, limit)[0]


def _describe_exit(status: dict[str, Any] | None, limits: SandboxLimits) -> str:
    mib = limits.memory_bytes // 2**20
    if status is None:
        return "sandbox process died"
    code, sig = status.get("code"), status.get("signal")
    if sig is not None:
        if sig == signal.SIGXCPU:
            return f"killed: CPU time limit ({limits.cpu_seconds} s)"
        name = _signal_name(sig)
        if sig == signal.SIGKILL:
            return f"killed: {name} (CPU hard limit, out-of-memory killer or external kill)"
        if sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT):
            return f"crashed: {name} (possibly the memory limit, {mib} MiB)"
        return f"killed: {name}"
    if code == proto.EXIT_MEMORY:
        return f"killed: memory limit ({mib} MiB)"
    if code == proto.EXIT_SETUP_FAILED:
        return "sandbox setup failed"
    if code == proto.EXIT_PROTOCOL:
        return "crashed: protocol violation by the sandbox"
    if code == proto.EXIT_PARENT_GONE:
        return "crashed: sandbox lost its parent"
    if code == 0:
        return "sandbox exited unexpectedly"
    return f"crashed: exit code {code}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
