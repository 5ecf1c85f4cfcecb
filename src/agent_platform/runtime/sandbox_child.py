"""Sandbox zygote and sandbox child (the untrusted side of :mod:`.sandbox`).

The worker starts one *zygote* per :class:`~agent_platform.runtime.sandbox.SandboxPool` with a
clean environment (``python -I -B -c <boot>``; the boot code loads this file and
``sandbox_protocol.py`` by path, so no package ``__init__`` with side effects runs).  The zygote:

1. reads its configuration from the control socket (a ``SOCK_SEQPACKET`` socketpair),
2. stands in for ``dotenv`` (some smolagents modules call ``load_dotenv()`` on import), imports
   smolagents' interpreter alone, then clears ``os.environ`` and sets only the allowlist; it
   imports no more than that (each shared library it maps costs every fork and exit),
3. probes which isolation layers the kernel grants (network namespace, mount namespace,
   privilege drop, RLIMIT_NPROC) and reports them in a ``hello`` message,
4. keeps ``prefork`` children ready and hands one to the worker per ``spawn`` request (its socket
   and a pidfd go over ``SCM_RIGHTS``).  It reaps children only once the worker ``release``-d
   them, so a child's pid (= its process group id) cannot be recycled while the worker may still
   ``killpg`` it, and it reports exit statuses (``exited``) so the worker can say why a child died.

Each child, right after ``fork()`` and before any model code exists:

* ``setsid()``; ``PR_SET_PDEATHSIG=SIGKILL`` (the zygote itself dies with the worker); closes every
  fd but its socket (moved to fd 3) and points 0/1/2 at ``/dev/null``;
* no network: the zygote entered a private network namespace with no interface up (loopback
  down) before forking any child; children share it (one namespace per child would cost ~1 ms
  of kernel work per execution), so with loopback down no sandbox can reach another; without
  ``CAP_SYS_ADMIN`` each child makes its own inside a user namespace instead;
* the zygote's mount namespace, also set up once before the first fork: empty tmpfs over
  ``/run``, ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/root``, ``/home`` ... (this hides the
  PostgreSQL/MySQL unix sockets and root's dotfiles; the Python installation is bind-mounted
  back when it lives below a hidden or non-traversable directory) and a fresh ``/proc`` mounted
  with ``hidepid=invisible``; the child's working/temp dir is a size-capped ``noexec`` tmpfs
  the zygote mounts for it before the fork (mode 0700, owned by the child's uid) and unmounts
  when it reaps it, so work dirs exist only in that namespace;
* environment = the allowlist + ``HOME``/``TMPDIR`` = its own dir;
* rlimits: ``AS``, ``CPU``, ``NOFILE``, ``FSIZE``, ``CORE=0``;
* when running as root: ``PR_SET_NO_NEW_PRIVS``, drops all groups and switches to a *unique*
  unprivileged uid/gid (so sandboxes cannot signal each other and cannot read
  ``/proc/<root pid>/environ|mem``), then ``RLIMIT_NPROC=0``, which the kernel enforces for a
  non-root uid: ``fork``/``clone`` (processes *and* threads) fail with ``EAGAIN``;
* defence in depth inside the interpreter process: ``os.fork``/``exec*``/``spawn*``/``system``/
  ``popen``/``posix_spawn``, ``subprocess``, ``pty`` and socket creation are replaced with
  functions that raise.  The zygote does this to itself once, before it serves, keeping the
  originals it needs for its own forks and socket pairs: patching in each child wrote to ~190
  pages shared with the zygote (a copy-on-write fault each, ~0.4 ms per execution).

What holds where (probed at start-up, reported by ``SandboxPool.isolation_details``):

* worker is root (this machine, CI): every layer above; ``isolation_level == "netns"``.
* root without ``CAP_SYS_ADMIN`` (restricted container): privilege drop + rlimits; the network
  namespace comes from an unprivileged user namespace when the kernel allows it, else
  ``"socket-blocked"``; no mount namespace (``/run`` sockets stay visible).
* unprivileged worker: rlimits (``RLIMIT_NPROC=0`` is enforced: no fork/threads), a network
  namespace via a user namespace if allowed, else ``"socket-blocked"`` - which is only the
  in-process monkeypatch: code that escapes the interpreter and uses ``ctypes`` can still open
  sockets, and nothing hides filesystem unix sockets.

Then it serves one execution: interpreter state lives here between ``exec`` requests, tools are
proxies whose calls are brokered over the socket, and ``final_answer`` (the stock, pure
``FinalAnswerTool``) runs locally.
"""

from __future__ import annotations

import _signal
import _socket
import contextlib
import ctypes
import errno
import gc
import io
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque
from typing import Any

try:  # normal package import (worker side, tests)
    from . import sandbox_protocol as proto
except ImportError:  # loaded by path inside the zygote (see sandbox._BOOT)
    import agent_platform_sandbox_protocol as proto  # type: ignore[no-redef]

# --------------------------------------------------------------------------------------------
# libc helpers
# --------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
CHANNEL_FD = 3
WORKDIR_INODES = 4096
REFILL_BACKOFF_S = 5.0

# The zygote's own means to fork and to make socket pairs: the names in ``os``/``socket`` are
# replaced with refusals before it serves (see `_block_process_creation`).
_fork = os.fork
_socketpair = _socket.socketpair
_RawSocket = _socket.socket  # socket.socket's __init__ looks `_socket.socket` up at call time
_SIGINT, _SIG_DFL = int(signal.SIGINT), int(signal.SIG_DFL)

_libc = ctypes.CDLL(None, use_errno=True)
_char_p, _ulong = ctypes.c_char_p, ctypes.c_ulong
_libc.mount.argtypes = [_char_p, _char_p, _char_p, _ulong, _char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.umount2.argtypes = [_char_p, ctypes.c_int]
MNT_DETACH = 2
_libc.prctl.argtypes = [ctypes.c_int, _ulong, _ulong, _ulong, _ulong]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def _umount(target: str) -> None:
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), f"umount {target}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(_libc.mount(b(src), b(target), b(fstype), flags, b(data)), f"mount {target}")


def _die_with_parent(expected_parent: int) -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:  # the parent died before prctl took effect
        os._exit(proto.EXIT_PARENT_GONE)


def _kill_group(pid: int, pidfd: int) -> None:
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Child set-up
# --------------------------------------------------------------------------------------------


def _refuse_process(*_args: Any, **_kwargs: Any) -> Any:
    raise PermissionError(errno.EPERM, "creating processes is not allowed in the sandbox")


def _refuse_network(*_args: Any, **_kwargs: Any) -> Any:
    raise PermissionError(errno.EACCES, "network access is not allowed in the sandbox")


_PROCESS_FUNCS = (
    "fork", "forkpty", "vfork", "system", "popen", "posix_spawn", "posix_spawnp", "fexecve",
    "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "register_at_fork",
)  # fmt: skip


def _block_process_creation() -> None:
    import _posixsubprocess
    import posix
    import pty
    import subprocess

    for mod in (os, posix):
        for name in _PROCESS_FUNCS:
            if hasattr(mod, name):
                setattr(mod, name, _refuse_process)

    class _NoPopen(subprocess.Popen):  # keeps isinstance() checks working
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _refuse_process()

    subprocess.Popen = _NoPopen  # type: ignore[misc]
    for name in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, _refuse_process)
    _posixsubprocess.fork_exec = _refuse_process
    pty.fork = _refuse_process
    pty.spawn = _refuse_process


def _block_sockets() -> None:
    class _NoSocket(socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _refuse_network()

    class _NoRawSocket(_socket.socket):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _refuse_network()

    socket.socket = _NoSocket  # type: ignore[misc]
    socket.SocketType = _NoRawSocket  # type: ignore[misc]
    _socket.socket = _NoRawSocket  # type: ignore[misc]
    _socket.SocketType = _NoRawSocket  # type: ignore[attr-defined]
    for mod in (socket, _socket):
        for name in (
            "create_connection", "create_server", "socketpair", "fromfd", "fromshare",
            "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo",
        ):  # fmt: skip
            if hasattr(mod, name):
                setattr(mod, name, _refuse_network)


def _keep_paths() -> list[str]:
    """Directories the child must still be able to read (the Python installation, sys.path)."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    out: list[str] = []
    for p in candidates:
        if p and os.path.isdir(p):
            rp = os.path.realpath(p)
            if rp not in out:
                out.append(rp)
    return out


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _blocked_ancestor(path: str) -> str | None:
    """Top-most directory on ``path`` that "others" cannot traverse (e.g. ``/root`` 0700)."""
    cur = "/"
    for part in path.strip("/").split("/"):
        cur = os.path.join(cur, part)
        try:
            if not os.stat(cur).st_mode & 0o001:
                return cur
        except OSError:
            return None
    return None


def _setup_zygote_mounts(cfg: dict[str, Any]) -> dict[str, Any]:
    """The zygote's own mount namespace, inherited by every child: the hidden paths, a fresh
    `/proc` and a tmpfs at `base_dir` for the children's work dirs (which then exist only in
    this namespace). One namespace instead of one per child saves its creation and teardown
    (a copy of the whole mount table) on every execution; what differs per child, its work
    dir, is a size-capped tmpfs the zygote mounts before the fork."""
    _unshare(CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    keep = _keep_paths()
    hide: list[str] = []
    for p in list(cfg["hide_paths"]) + [a for k in keep if (a := _blocked_ancestor(k))]:
        rp = os.path.realpath(p)
        if os.path.isdir(rp) and rp != "/" and rp not in hide:
            hide.append(rp)
    hide.sort(key=lambda p: p.count("/"))
    hidden: list[str] = []
    for h in hide:
        if any(_under(h, done) for done in hidden):
            continue
        inner = [k for k in keep if _under(k, h)]
        if h in inner:  # the installation itself lives there: cannot hide it
            continue
        inner = [k for k in inner if not any(k != o and _under(k, o) for o in inner)]
        fds = [(os.open(k, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), k) for k in inner]
        _mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m")
        for fd, k in fds:
            os.makedirs(k, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC, None)
            os.close(fd)
        hidden.append(h)
    base = cfg["base_dir"]
    os.makedirs(base, mode=0o711, exist_ok=True)
    _mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0711,size=64k")
    try:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
        hidepid = True
    except OSError:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
            hidepid = True
        except OSError:
            hidepid = False
    size = int(cfg["limits"]["max_disk_bytes"])
    return {"mount_namespace": True, "hidden_paths": hidden, "workdir_tmpfs_bytes": size,
            "proc_hidepid": hidepid}  # fmt: skip


def _mount_workdir(workdir: str, uid: int, size: int) -> None:
    _mount(
        "tmpfs",
        workdir,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        f"mode=0700,size={size},nr_inodes={WORKDIR_INODES},uid={uid},gid={uid}",
    )


def _setup_child(
    cfg: dict[str, Any], eff: dict[str, Any], workdir: str, uid: int, zygote_pid: int
) -> dict[str, Any]:
    limits = cfg["limits"]
    layers: dict[str, Any] = {"network": "socket-blocked", "mount_namespace": False}
    if eff["netns"] and not eff.get("netns_via_userns"):
        layers["network"] = "netns"  # the zygote's own: created once, inherited by every child
    if eff["mountns"]:
        layers.update(eff["mount_layers"])  # the zygote's namespace, set up once
    os.chdir(workdir)
    # the zygote's environment is already exactly the allowlist (see `zygote_main`)
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PWD": workdir})
    if (tempfile := sys.modules.get("tempfile")) is not None:  # else TMPDIR is read on import
        tempfile.tempdir = workdir
    os.umask(0o077)
    rl = resource
    rl.setrlimit(rl.RLIMIT_CORE, (0, 0))
    rl.setrlimit(rl.RLIMIT_FSIZE, (limits["max_file_bytes"], limits["max_file_bytes"]))
    rl.setrlimit(rl.RLIMIT_NOFILE, (limits["max_open_files"], limits["max_open_files"]))
    cpu = int(limits["cpu_seconds"])
    rl.setrlimit(rl.RLIMIT_CPU, (cpu, cpu + 1))
    rl.setrlimit(rl.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if eff["drop_privileges"]:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _die_with_parent(zygote_pid)  # credential changes clear PDEATHSIG: set it again
        layers["uid"] = uid
    layers["privileges_dropped"] = bool(eff["drop_privileges"])
    if eff["netns"] and eff.get("netns_via_userns"):
        # No CAP_SYS_ADMIN: the network namespace is owned by a new user namespace, created
        # once unprivileged (the capabilities it grants only cover namespaces the child owns).
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        layers["network"] = "netns"
        layers["user_namespace"] = True
    # Not enforced for root (CAP_SYS_RESOURCE), enforced once we are an unprivileged uid.
    rl.setrlimit(rl.RLIMIT_NPROC, (0, 0))
    layers["kernel_blocks_fork"] = os.geteuid() != 0
    layers["rlimits"] = {
        "as": limits["memory_bytes"], "cpu": cpu, "nofile": limits["max_open_files"],
        "fsize": limits["max_file_bytes"], "core": 0, "nproc": 0,
    }  # fmt: skip
    return layers


def _isolate_fds(sock_fd: int) -> int:
    if sock_fd != CHANNEL_FD:
        os.dup2(sock_fd, CHANNEL_FD, inheritable=False)
        os.close(sock_fd)
    os.closerange(CHANNEL_FD + 1, 1 << 20)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return CHANNEL_FD


# --------------------------------------------------------------------------------------------
# The execution session (runs in the child)
# --------------------------------------------------------------------------------------------


class ToolError(Exception):
    """Raised inside the model's code when a brokered tool call fails or is refused."""


class _CappedPrint:
    """Replacement for smolagents' ``PrintContainer`` that stops growing at ``cap`` chars."""

    cap = 64 * 1024

    def __init__(self) -> None:
        self._value = ""
        self._dropped = 0

    def _add(self, text: str) -> None:
        room = self.cap - len(self._value)
        if room > 0:
            self._value += text[:room]
        self._dropped += max(0, len(text) - max(room, 0))

    def append(self, text: str) -> _CappedPrint:
        self._add(str(text))
        return self

    def __iadd__(self, other: Any) -> _CappedPrint:
        self._add(str(other))
        return self

    @property
    def value(self) -> str:
        if not self._dropped:
            return self._value
        return (
            self._value + f"\n..._print output truncated: {self._dropped} more characters "
            f"dropped (limit {self.cap})_...\n"
        )

    @value.setter
    def value(self, text: str) -> None:
        self._value, self._dropped = str(text), 0

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"PrintContainer({self.value})"

    def __len__(self) -> int:
        return len(self.value)


class _CappedWriter(io.TextIOBase):
    def __init__(self, cap: int) -> None:
        self.buf = _CappedPrint()
        self.buf.cap = cap

    def write(self, s: str) -> int:
        self.buf += s
        return len(s)


def _safe_str(value: Any) -> str:
    for conv in (str, repr):
        try:
            return conv(value)
        except BaseException:
            continue
    return f"<unprintable {type(value).__name__}>"


def _wire_value(value: Any, cap: int) -> tuple[Any, bool]:
    """``(value, converted_to_text)`` with a JSON encoding of at most ``cap`` bytes."""
    if isinstance(value, str):
        return proto.fit_text(str(value), cap)[0], False
    try:
        size = proto.json_size(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        return proto.fit_text(_safe_str(value), cap)[0], True
    if size <= cap:
        return value, False
    return proto.fit_text(proto.dumps(value).decode("utf-8"), cap)[0], True


class _Session:
    def __init__(self, sock: _socket.socket, cfg: dict[str, Any], layers: dict[str, Any]) -> None:
        from smolagents import local_python_executor as lpe

        self.sock = sock
        self.cfg = cfg
        self.layers = layers
        limits = cfg["limits"]
        self.max_output = int(limits["max_output_bytes"])
        self.max_final = max(int(limits["max_final_answer_bytes"]), self.max_output)
        self.max_tool_args = int(limits["max_tool_args_bytes"])
        self.memory_mib = int(limits["memory_bytes"]) // 2**20
        self.allow_raw = bool(cfg.get("allow_raw_exec"))
        self.lpe = lpe
        _CappedPrint.cap = self.max_output
        lpe.PrintContainer = _CappedPrint  # used by evaluate_python_code for every call
        template = _TEMPLATE_EXECUTOR
        if template is None:
            template = _new_executor(cfg)
        self.executor = template

    # -- channel ----------------------------------------------------------------------------
    def send(self, obj: dict[str, Any], *, default: Any = None) -> None:
        try:
            proto.send_frame(self.sock, obj, default=default)
        except (BrokenPipeError, ConnectionError):
            os._exit(proto.EXIT_OK)  # the worker is gone

    def recv(self) -> dict[str, Any]:
        try:
            return proto.recv_frame(self.sock)
        except proto.ChannelClosed:
            os._exit(proto.EXIT_OK)
        except proto.ProtocolError:
            os._exit(proto.EXIT_PROTOCOL)

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> int:
        self.send({"op": "ready", "pid": os.getpid(), "isolation": self.layers})
        while True:
            msg = self.recv()
            op = msg["op"]
            if op == "exec":
                self.exec_code(msg.get("code"))
            elif op == "tools":
                self.set_tools(msg.get("tools"))
            elif op == "vars":
                variables = msg.get("vars")
                if not isinstance(variables, dict):
                    return proto.EXIT_PROTOCOL
                self.executor.send_variables(variables)
            elif op == "exec_raw" and self.allow_raw:
                self.exec_raw(msg.get("code"))
            elif op == "exit":
                return proto.EXIT_OK
            else:
                return proto.EXIT_PROTOCOL

    def set_tools(self, specs: Any) -> None:
        if not isinstance(specs, list):
            os._exit(proto.EXIT_PROTOCOL)
        tools: dict[str, Any] = {}
        for spec in specs:
            name = spec.get("name") if isinstance(spec, dict) else None
            if not isinstance(name, str):
                os._exit(proto.EXIT_PROTOCOL)
            if name == "final_answer" and spec.get("local"):
                tools[name] = _final_answer
            else:
                tools[name] = self.make_proxy(name, spec)
        self.executor.send_tools(tools)

    def make_proxy(self, name: str, spec: dict[str, Any]) -> Any:
        session = self

        def proxy(*args: Any, **kwargs: Any) -> Any:
            return session.call_tool(name, args, kwargs)

        proxy.__name__ = proxy.__qualname__ = name
        proxy.__doc__ = str(spec.get("description") or "")
        proxy.name = name  # type: ignore[attr-defined]
        proxy.description = proxy.__doc__  # type: ignore[attr-defined]
        proxy.inputs = spec.get("inputs") or {}  # type: ignore[attr-defined]
        proxy.output_type = spec.get("output_type") or "any"  # type: ignore[attr-defined]
        return proxy

    def call_tool(self, name: str, args: Any, kwargs: Any) -> Any:
        msg = {"op": "tool_call", "name": name, "args": list(args), "kwargs": dict(kwargs)}
        try:
            frame = proto.encode_frame(msg, default=_safe_str)
        except (TypeError, ValueError, RecursionError) as e:
            raise ToolError(f"arguments to tool {name!r} cannot be serialised: {e}") from None
        if len(frame) > self.max_tool_args:
            raise ToolError(
                f"arguments to tool {name!r} are too large "
                f"({len(frame)} bytes, limit {self.max_tool_args})"
            )
        try:
            self.sock.settimeout(None)
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionError):
            os._exit(proto.EXIT_OK)
        reply = self.recv()
        if reply.get("op") != "tool_result":
            os._exit(proto.EXIT_PROTOCOL)
        if reply.get("ok"):
            return reply.get("value")
        raise ToolError(str(reply.get("error") or f"tool {name!r} failed"))

    def _logs(self) -> str:
        logs = str(self.executor.state.get("_print_outputs", ""))
        return proto.fit_text(logs, self.max_output)[0]

    def exec_code(self, code: Any) -> None:
        if not isinstance(code, str):
            os._exit(proto.EXIT_PROTOCOL)
        try:
            out = self.executor(code)
        except MemoryError:
            self.executor.state.pop("_print_outputs", None)
            gc.collect()
            self.send_error(f"MemoryError: the sandbox memory limit ({self.memory_mib} MiB) is hit")
            return
        except BaseException as e:  # the model's code may raise anything, even SystemExit
            if isinstance(e, self.lpe.InterpreterError):
                message = str(e)
            else:
                message = f"{type(e).__name__}: {_safe_str(e)}"
            if "MemoryError" in message:
                message += f" (the sandbox memory limit is {self.memory_mib} MiB)"
            self.send_error(message, self._logs())
            return
        cap = self.max_final if out.is_final_answer else self.max_output
        value, as_text = _wire_value(out.output, cap)
        self.send(
            {
                "op": "result",
                "output": value,
                "output_is_text": as_text,
                "logs": self._logs(),
                "is_final_answer": bool(out.is_final_answer),
            }
        )

    def send_error(self, message: str, logs: str = "") -> None:
        message = proto.fit_text(message, self.max_output)[0]
        self.send({"op": "error", "message": message, "logs": logs})

    def exec_raw(self, code: Any) -> None:
        """Test-only: run raw Python with ``exec`` to model an attacker who escaped the
        interpreter.  Only honoured when the pool was created with ``_allow_raw_exec=True``."""
        if not isinstance(code, str):
            os._exit(proto.EXIT_PROTOCOL)
        out = _CappedWriter(self.max_output)
        ns: dict[str, Any] = {
            "__name__": "__sandbox_raw__",
            "call_tool": lambda name, *a, **k: self.call_tool(name, a, k),
            "channel": self.sock,
        }
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<raw>", "exec"), ns)
        except BaseException as e:
            tb = "".join(traceback.format_exception(e)[-3:])
            self.send_error(f"{type(e).__name__}: {_safe_str(e)}\n{tb}", str(out.buf))
            return
        value, as_text = _wire_value(ns.get("result"), self.max_output)
        self.send(
            {
                "op": "result",
                "output": value,
                "output_is_text": as_text,
                "logs": proto.fit_text(str(out.buf), self.max_output)[0],
                "is_final_answer": False,
            }
        )


def _child_main(
    sock_fd: int,
    cfg: dict[str, Any],
    eff: dict[str, Any],
    workdir: str,
    uid: int,
    zygote_pid: int,
) -> int:
    os.setsid()
    _die_with_parent(zygote_pid)
    sock_fd = _isolate_fds(sock_fd)
    # the zygote ignores SIGINT (the rest are default); `signal.signal` would also convert
    # through its enums, touching (and so copying) many more of the zygote's pages
    _signal.signal(_SIGINT, _SIG_DFL)
    sock = _RawSocket(fileno=sock_fd)
    try:
        layers = _setup_child(cfg, eff, workdir, uid, zygote_pid)
        session = _Session(sock, cfg, layers)
    except Exception as e:
        with contextlib.suppress(Exception):
            err = f"{type(e).__name__}: {e}"
            proto.send_frame(
                sock, {"op": "setup_failed", "error": err}, deadline=time.monotonic() + 1
            )
        return proto.EXIT_SETUP_FAILED
    try:
        return session.run()
    except MemoryError:
        return proto.EXIT_MEMORY


# --------------------------------------------------------------------------------------------
# Zygote
# --------------------------------------------------------------------------------------------

_TEMPLATE_EXECUTOR: Any = None


def _new_executor(cfg: dict[str, Any]) -> Any:
    from smolagents.local_python_executor import LocalPythonExecutor

    executor = LocalPythonExecutor(
        additional_authorized_imports=list(cfg["authorized_imports"]),
        max_print_outputs_length=int(cfg["limits"]["max_output_bytes"]),
        timeout_seconds=None,  # the worker enforces the wall clock; no helper thread here
    )
    executor.send_tools({})
    return executor


def _sanitize_environ(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})


def _nothing() -> None:
    return None


def _quiet_child_fork_hooks() -> None:
    """Make `threading`'s and `logging`'s after-fork hooks no-ops (the interpreter and
    smolagents import both).  They reset thread tables and locks in every child before its
    first line runs, writing to ~60 pages shared with the zygote (a copy-on-write fault each,
    ~0.1 ms per execution).  There is nothing to reset: the zygote has one thread, so no lock
    can be held by another at the fork, and a child runs one thread too."""
    import logging
    import threading

    for hook in (
        threading._after_fork,
        getattr(logging, "_after_at_fork_child_reinit_locks", None),
    ):
        if hook is not None and hook.__code__.co_argcount == 0:
            hook.__code__ = _nothing.__code__


def _no_dotenv(*_args: Any, **_kwargs: Any) -> bool:
    return False


def _disable_dotenv() -> None:
    """Some smolagents modules call ``load_dotenv()`` on import, which would read a ``.env``
    file into the zygote's memory, inherited by every child.  A stand-in ``dotenv`` module
    makes that a no-op for good, without importing python-dotenv itself (which brings tempfile,
    shutil, zlib, bz2 and lzma: 30 more memory mappings for every fork to copy)."""
    import types

    stub = types.ModuleType("dotenv")
    stub.load_dotenv = _no_dotenv  # type: ignore[attr-defined]
    stub.find_dotenv = lambda *_a, **_k: ""  # type: ignore[attr-defined]
    stub.dotenv_values = lambda *_a, **_k: {}  # type: ignore[attr-defined]
    stub.main = stub  # type: ignore[attr-defined]
    sys.modules["dotenv"] = sys.modules["dotenv.main"] = stub


def _load_interpreter() -> None:
    """Import smolagents' interpreter without the agent framework around it.

    ``import smolagents`` pulls in the agents, models, rich, huggingface_hub and requests (about
    600 modules, 53 MB); the interpreter needs none of them.  Registering the package without
    running its ``__init__`` and giving ``local_python_executor`` the one name it takes from
    ``smolagents.tools`` (``Tool``, used in annotations only) halves the zygote's memory, and
    every child's fork, copy-on-write faults and exit cost fall with it.  smolagents is pinned
    to a minor release, whose module layout this relies on.
    """
    import importlib.util
    import types

    spec = importlib.util.find_spec("smolagents")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("smolagents is not installed")
    package = types.ModuleType("smolagents")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules.setdefault("smolagents", package)
    if "smolagents.tools" not in sys.modules:
        tools = types.ModuleType("smolagents.tools")
        tools.Tool = object  # type: ignore[attr-defined]
        sys.modules["smolagents.tools"] = tools
    # `smolagents.utils` imports jinja2 for one template function the interpreter never calls;
    # jinja2 brings hashlib (OpenSSL), pickle and markupsafe: 34 more memory mappings that every
    # fork copies and every exit tears down. A placeholder stands in while it is imported.
    real_jinja2 = sys.modules.get("jinja2")
    if real_jinja2 is None and "smolagents.utils" not in sys.modules:
        sys.modules["jinja2"] = types.ModuleType("jinja2")
    try:
        import smolagents.local_python_executor  # noqa: F401
    finally:
        if real_jinja2 is None:
            sys.modules.pop("jinja2", None)


def _final_answer(*args: Any, **kwargs: Any) -> Any:
    """smolagents' ``FinalAnswerTool`` called as a tool: ``final_answer(x)``,
    ``final_answer(answer=x)`` or ``final_answer({"answer": x})``; returns ``x``."""
    if len(args) == 1 and not kwargs and isinstance(args[0], dict) and set(args[0]) == {"answer"}:
        return args[0]["answer"]
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and set(kwargs) == {"answer"}:
        return kwargs["answer"]
    raise TypeError("final_answer() takes exactly one argument: the answer")


def _preload(cfg: dict[str, Any]) -> list[str]:
    import importlib

    from smolagents.utils import BASE_BUILTIN_MODULES

    failed = []
    names = list(BASE_BUILTIN_MODULES) + list(cfg.get("preload") or [])
    names += ["_strptime", "encodings.latin_1", "encodings.ascii", "encodings.idna", "json"]
    names += ["subprocess", "pty", "_posixsubprocess", "posix", "_socket"]
    for name in names:
        if not name or "*" in name:
            continue
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    return failed


def _probe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fork a throw-away process that tries each isolation layer; report what worked."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the probe process
        res: dict[str, Any] = {"netns": False, "mountns": False, "drop_privileges": False}
        res["nproc_blocks_fork"] = False
        res["errors"] = {}
        try:
            os.close(r)
            os.setsid()
            want_netns = cfg["isolation"] != "socket-blocked"
            if want_netns:
                try:
                    _unshare(CLONE_NEWNET)
                    res["netns"] = True
                except OSError as e:
                    res["errors"]["netns"] = str(e)
            if os.geteuid() == 0:
                try:
                    _unshare(CLONE_NEWNS)
                    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
                    _mount("tmpfs", cfg["base_dir"], "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")
                    res["mountns"] = True
                except OSError as e:
                    res["errors"]["mountns"] = str(e)
                try:
                    uid = int(cfg["uid_base"])
                    os.setgroups([])
                    os.setresgid(uid, uid, uid)
                    os.setresuid(uid, uid, uid)
                    res["drop_privileges"] = True
                except OSError as e:
                    res["errors"]["drop_privileges"] = str(e)
            if want_netns and not res["netns"]:
                # No CAP_SYS_ADMIN (unprivileged worker, or root in a restricted container): an
                # unprivileged user namespace may still give the child its own network.
                try:
                    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
                    res["netns"] = res["netns_via_userns"] = True
                    res["errors"].pop("netns", None)
                except OSError as e:
                    res["errors"]["netns_userns"] = str(e)
            try:
                resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
                child = _libc.fork()
                if child == 0:
                    _libc._exit(0)
                elif child > 0:
                    os.waitpid(child, 0)
                else:
                    res["nproc_blocks_fork"] = True
            except OSError as e:
                res["errors"]["nproc"] = str(e)
        finally:
            with contextlib.suppress(BaseException):
                os.write(w, json.dumps(res).encode())
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    try:
        return json.loads(b"".join(chunks).decode())
    except ValueError:
        return {"netns": False, "mountns": False, "drop_privileges": False, "errors": {}}


class _Child:
    __slots__ = ("exited", "handed", "parent_fd", "pid", "pidfd", "released", "reply", "workdir")

    def __init__(self, pid: int, pidfd: int, parent_fd: int, workdir: str) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.parent_fd = parent_fd
        self.workdir = workdir
        self.handed = False
        self.released = False
        self.reply = True  # tell the worker once reaped (it may wait for that)
        self.exited = False


class _Zygote:
    def __init__(self, ctl: socket.socket, cfg: dict[str, Any], eff: dict[str, Any]) -> None:
        self.ctl = ctl
        self.cfg = cfg
        self.eff = eff
        self.pid = os.getpid()
        self.prefork = max(0, int(cfg.get("prefork", 2)))
        self.poll = select.poll()
        self.poll.register(ctl.fileno(), select.POLLIN)
        self.by_pidfd: dict[int, _Child] = {}
        self.by_pid: dict[int, _Child] = {}
        self.ready: deque[_Child] = deque()
        self.counter = 0
        self.failures = 0
        self.backoff_until = 0.0

    # -- messaging --------------------------------------------------------------------------
    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        data = proto.encode_frame(msg, max_frame=proto.MAX_CONTROL_FRAME_BYTES)
        try:
            if fds:
                socket.send_fds(self.ctl, [data], fds)
            else:
                self.ctl.sendall(data)
        except OSError:
            self.shutdown()

    # -- children ---------------------------------------------------------------------------
    def fork_child(self) -> _Child:
        self.counter += 1
        uid = int(self.cfg["uid_base"]) + self.counter % int(self.cfg["uid_count"])
        # base_dir is this zygote's own (0711, made by the pool): the counter makes names unique
        workdir = os.path.join(self.cfg["base_dir"], f"sbx-{self.counter}")
        os.mkdir(workdir, 0o700)
        if self.eff["drop_privileges"]:
            os.chown(workdir, uid, uid)
        if self.eff["mountns"]:
            try:
                _mount_workdir(workdir, uid, int(self.cfg["limits"]["max_disk_bytes"]))
            except OSError:
                os.rmdir(workdir)
                raise
        a, b = _socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent_fd, child_fd = a.detach(), b.detach()
        try:
            pid = _fork()
        except OSError:
            os.close(parent_fd)
            os.close(child_fd)
            self.discard_workdir(workdir)
            raise
        if pid == 0:  # pragma: no cover - runs in the child
            code = proto.EXIT_INTERNAL
            try:
                self.ctl.detach()  # never close the zygote's control fd number from the child
                code = _child_main(child_fd, self.cfg, self.eff, workdir, uid, self.pid)
            except MemoryError:
                code = proto.EXIT_MEMORY
            except BaseException:
                code = proto.EXIT_INTERNAL
            finally:
                os._exit(code)
        os.close(child_fd)
        pidfd = os.pidfd_open(pid)
        child = _Child(pid, pidfd, parent_fd, workdir)
        self.by_pidfd[pidfd] = child
        self.by_pid[pid] = child
        self.poll.register(pidfd, select.POLLIN)
        return child

    def add_ready(self) -> None:
        try:
            self.ready.append(self.fork_child())
        except OSError as e:
            self.note_failure(f"sandbox prefork failed: {e}")

    def note_failure(self, message: str) -> None:
        """Pre-forking keeps failing: log it once and pause refills (retried later)."""
        self.failures += 1
        if self.failures >= 3:
            self.failures = 0
            self.backoff_until = time.monotonic() + REFILL_BACKOFF_S
            self.send({"op": "log", "message": message[:4000]})

    def has_exited(self, child: _Child) -> bool:
        probe = select.poll()  # not select(): pidfd numbers may exceed FD_SETSIZE
        probe.register(child.pidfd, select.POLLIN)
        return bool(probe.poll(0))

    def reap(self, child: _Child) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)
        with contextlib.suppress(KeyError, OSError):
            self.poll.unregister(child.pidfd)
        os.close(child.pidfd)
        if child.parent_fd >= 0:
            os.close(child.parent_fd)
        self.by_pidfd.pop(child.pidfd, None)
        self.by_pid.pop(child.pid, None)
        self.discard_workdir(child.workdir)

    def discard_workdir(self, workdir: str) -> None:
        if self.eff["mountns"]:
            with contextlib.suppress(OSError):
                _umount(workdir)
                os.rmdir(workdir)  # the files were on the tmpfs just unmounted
                return
        import shutil  # only without a mount namespace: it imports zlib, bz2 and lzma

        shutil.rmtree(workdir, ignore_errors=True)

    def on_child_exit(self, child: _Child) -> None:
        with contextlib.suppress(KeyError, OSError):
            self.poll.unregister(child.pidfd)
        child.exited = True
        code = sig = None
        try:
            info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is not None:
            if info.si_code == os.CLD_EXITED:
                code = info.si_status
            else:
                sig = info.si_status
        if not child.handed:  # a pre-forked child died before use
            if child in self.ready:
                self.ready.remove(child)
            detail = ""
            with contextlib.suppress(Exception):
                os.set_blocking(child.parent_fd, False)
                data = os.read(child.parent_fd, 65536)
                detail = data[proto.HEADER_SIZE :].decode("utf-8", "replace")
            self.reap(child)
            self.note_failure(f"sandbox children keep dying: code={code} signal={sig} {detail}")
            return
        if child.released:
            self.reap(child)
            if child.reply:
                self.send({"op": "reaped", "pid": child.pid})
        else:
            self.send({"op": "exited", "pid": child.pid, "code": code, "signal": sig})

    # -- requests ---------------------------------------------------------------------------
    def on_spawn(self, req_id: Any) -> None:
        child = None
        while self.ready:
            candidate = self.ready.popleft()
            if self.has_exited(candidate):
                self.on_child_exit(candidate)
                continue
            child = candidate
            break
        if child is None:
            try:
                child = self.fork_child()
            except OSError as e:
                self.send({"op": "spawn_error", "id": req_id, "error": f"fork failed: {e}"})
                return
        else:
            self.failures = 0
        msg = {"op": "spawned", "id": req_id, "pid": child.pid, "workdir": child.workdir}
        self.send(msg, [child.parent_fd, child.pidfd])
        os.close(child.parent_fd)
        child.parent_fd = -1
        child.handed = True

    def on_release(self, pid: Any, reply: bool) -> None:
        child = self.by_pid.get(pid) if isinstance(pid, int) else None
        if child is None or not child.handed:
            if reply:
                self.send({"op": "reaped", "pid": pid})
            return
        child.released = True
        child.reply = reply
        if child.exited:
            self.reap(child)
            if reply:
                self.send({"op": "reaped", "pid": pid})
        else:
            _kill_group(child.pid, child.pidfd)

    def shutdown(self) -> None:
        children = list(self.by_pid.values())
        for child in children:
            _kill_group(child.pid, child.pidfd)
        for child in children:
            with contextlib.suppress(OSError):
                self.reap(child)
        with contextlib.suppress(OSError):
            self.ctl.sendall(proto.encode_frame({"op": "bye"}))
        os._exit(0)

    def on_control(self) -> None:
        try:
            data = self.ctl.recv(proto.MAX_CONTROL_FRAME_BYTES)
        except OSError:
            data = b""
        if not data:  # the worker closed the channel or died
            self.shutdown()
        try:
            msg = proto.decode_datagram(data)
        except proto.ProtocolError:
            return
        op = msg["op"]
        if op == "spawn":
            self.on_spawn(msg.get("id"))
        elif op == "release":
            self.on_release(msg.get("pid"), msg.get("reply") is not False)
        elif op == "shutdown":
            self.shutdown()

    def serve(self) -> None:
        ctl_fd = self.ctl.fileno()
        while True:
            timeout: float | None = None
            refill = len(self.ready) < self.prefork
            if refill and (wait := self.backoff_until - time.monotonic()) > 0:
                refill, timeout = False, wait * 1000
            events = self.poll.poll(0 if refill else timeout)
            if not events:
                if refill:
                    self.add_ready()
                continue
            for fd, _ev in events:
                if fd == ctl_fd:
                    self.on_control()
                elif (child := self.by_pidfd.get(fd)) is not None and not child.exited:
                    self.on_child_exit(child)


def zygote_main(argv: list[str] | None = None) -> None:
    """Entry point of the zygote process: ``<boot> <control fd> <worker pid>``."""
    global _TEMPLATE_EXECUTOR
    args = sys.argv[1:] if argv is None else argv
    ctl_fd, parent_pid = int(args[0]), int(args[1])
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # a pidfd (+ socket) per child
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctl = socket.socket(fileno=ctl_fd)
    data = ctl.recv(proto.MAX_CONTROL_FRAME_BYTES)
    if not data:
        os._exit(0)
    cfg = proto.decode_datagram(data)["config"]
    for path in reversed(cfg.get("sys_path") or []):
        if path not in sys.path:
            sys.path.insert(0, path)
    _sanitize_environ(cfg["env"])
    _disable_dotenv()
    _load_interpreter()

    _sanitize_environ(cfg["env"])  # whatever importing may have added
    failed = _preload(cfg)
    _TEMPLATE_EXECUTOR = _new_executor(cfg)
    eff_probe = _probe(cfg)
    eff = {
        "netns": bool(eff_probe.get("netns")),
        "netns_via_userns": bool(eff_probe.get("netns_via_userns")),
        "drop_privileges": bool(eff_probe.get("drop_privileges")),
    }
    eff["mountns"] = bool(eff_probe.get("mountns")) and eff["drop_privileges"]
    errors = dict(eff_probe.get("errors", {}))
    if eff["netns"] and not eff["netns_via_userns"]:
        # One network namespace for the zygote and all its children rather than one per child:
        # creating and tearing down a namespace is ~1 ms of kernel work per execution. It has
        # no interface up (not even loopback); what children could share in it is abstract
        # unix socket names, and creating sockets is refused inside the interpreter.
        try:
            _unshare(CLONE_NEWNET)
        except OSError as e:
            eff["netns"] = False
            errors["netns"] = str(e)
    if eff["mountns"]:
        try:
            eff["mount_layers"] = _setup_zygote_mounts(cfg)
        except OSError as e:
            eff["mountns"] = False
            errors["mountns"] = str(e)
    level = "netns" if eff["netns"] else "socket-blocked"
    import threading

    hello = {
        "op": "hello",
        "pid": os.getpid(),
        "isolation_level": level,
        "layers": {
            "network_namespace": eff["netns"],
            "network_namespace_via_userns": eff["netns_via_userns"],
            "mount_namespace": eff["mountns"],
            "drop_privileges": eff["drop_privileges"],
            "kernel_blocks_fork": bool(eff_probe.get("nproc_blocks_fork")),
            "euid": os.geteuid(),
            "errors": errors,
        },
        "preload_failed": failed,
        "threads": threading.active_count(),
    }
    ctl.sendall(proto.encode_frame(hello, max_frame=proto.MAX_CONTROL_FRAME_BYTES))
    if cfg["isolation"] == "netns" and not eff["netns"]:
        os._exit(proto.EXIT_SETUP_FAILED)
    # What every child needs that is the same for all of them is done here, once: whatever a
    # child writes after the fork costs it a copy of the page.
    _sanitize_environ(cfg["env"])  # children add only HOME, TMPDIR and PWD
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _block_process_creation()
    _block_sockets()
    _quiet_child_fork_hooks()
    gc.collect()
    gc.freeze()  # keep the pre-imported heap shared (copy-on-write) with the children
    _Zygote(ctl, cfg, eff).serve()
