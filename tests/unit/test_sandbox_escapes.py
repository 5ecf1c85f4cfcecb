"""Adversarial suite: interpreter escapes and what an attacker who fully escaped can reach.

Two layers are tested.  First the public smolagents escape classes against the interpreter: they
must either be refused or, when they get through, find nothing.  Then a *full* escape is modelled
with the test-only raw ``exec`` hook (``_allow_raw_exec``): plain Python with ``ctypes`` in the
child, bypassing every in-process monkeypatch, so what remains is what the kernel enforces.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

import pytest
from smolagents.local_python_executor import InterpreterError

from agent_platform.runtime.sandbox import (
    SandboxError,
    SandboxLimits,
    SandboxPool,
    SandboxTimeout,
)
from tests.unit.sandbox_pools import spawned, started_pool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

CANARY = "canary-5b1d0e77-escape-suite"
ROOT = os.geteuid() == 0
LIMITS = SandboxLimits(
    step_timeout_s=3,
    memory_bytes=256 * 2**20,
    max_file_bytes=10 * 2**20,
    max_disk_bytes=16 * 2**20,
)
SECRET_ENV = {
    "AGENT_PLATFORM_CANARY": CANARY,
    "ANTHROPIC_API_KEY": f"sk-ant-{CANARY}",
    "OPENAI_API_KEY": f"sk-{CANARY}",
    "DATABASE_URL": f"postgresql://user:{CANARY}@127.0.0.1:5432/db",
    "REDIS_URL": f"redis://:{CANARY}@127.0.0.1:6379/0",
    "ADMIN_API_KEY": CANARY,
}

NET_HELPERS = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)

def tcp(port, ip=(127, 0, 0, 1)):
    fd = libc.socket(2, 1, 0)
    if fd < 0:
        return "socket-errno:%d" % ctypes.get_errno()
    addr = struct.pack("<H", 2) + struct.pack("!H", port) + bytes(ip) + bytes(8)
    rc = libc.connect(fd, addr, len(addr))
    err = ctypes.get_errno()
    libc.close(fd)
    return "connected" if rc == 0 else "errno:%d" % err

def unix(path):
    fd = libc.socket(1, 1, 0)
    if fd < 0:
        return "socket-errno:%d" % ctypes.get_errno()
    raw = path.encode()
    addr = struct.pack("<H", 1) + raw + bytes(108 - len(raw))
    rc = libc.connect(fd, addr, len(addr))
    err = ctypes.get_errno()
    libc.close(fd)
    return "connected" if rc == 0 else "errno:%d" % err
"""


@pytest.fixture(scope="module")
def pool():
    with started_pool(
        SECRET_ENV, limits=LIMITS, authorized_imports=["math"], prefork=2, _allow_raw_exec=True
    ) as p:
        yield p


@pytest.fixture
def sbx(pool):
    with spawned(pool, "escape") as ex:
        yield ex


def raw(ex, code: str):
    return ex._raw_exec(code).output


def tcp_reachable_from_worker(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


# -- interpreter-level escapes -------------------------------------------------------------------

INTERPRETER_ESCAPES = {
    "subclasses_walk": "[c for c in ().__class__.__base__.__subclasses__() if 'Popen' in str(c)]",
    "getattr_dunder": "getattr((), '__class__').__base__",
    "dunder_via_string": "name = '__cla' + 'ss__'\ngetattr('', name)",
    "format_string_globals": (
        "import random\n'{0.__init__.__globals__[_os].environ}'.format(random.Random)"
    ),
    "reexported_os": "import random\nrandom._os.environ",
    "collections_abc_sys": "import collections\ncollections.abc.sys.modules['os'].environ",
    "statistics_sys": "import statistics\nstatistics.sys.modules['os'].environ",
    "generator_frame": "g = (x for x in [1])\ng.gi_frame.f_globals",
    "generator_frame_back": "g = (x for x in [1])\nnext(g)\ng.gi_frame.f_back.f_globals",
    "traceback_frame": "try:\n    1 / 0\nexcept Exception as e:\n    t = e.__traceback__\nt",
    "dunder_import": "__import__('os').environ",
    "eval": "eval('1 + 1')",
    "open_proc_environ": "open('/proc/self/environ').read()",
    "del_time_bomb": ("class Bomb:\n    def __del__(self):\n        print('boom')\nb = Bomb()\nb"),
    "evil_str": "class Evil:\n    def __str__(self):\n        return 1 / 0\nEvil()",
}


@pytest.mark.parametrize("name", sorted(INTERPRETER_ESCAPES))
def test_interpreter_escape_is_refused_or_harmless(sbx, name):
    try:
        out = sbx(INTERPRETER_ESCAPES[name])
    except InterpreterError:
        return  # refused by the interpreter (first layer)
    except SandboxTimeout:
        return
    # It got through the interpreter: whatever it reached is inside the child.
    assert CANARY not in repr(out.output) + out.logs
    # Only JSON / text ever crosses back: no live object reaches the worker.
    assert isinstance(out.output, (str, int, float, bool, list, dict, type(None)))


def test_format_string_escape_gets_through_but_sees_only_the_sandbox_env(sbx):
    """``str.format`` walks attributes the interpreter never sees: in-process this dumps the
    worker's environment (provider keys...).  In the sandbox it shows the allowlist only."""
    out = sbx(INTERPRETER_ESCAPES["format_string_globals"])
    assert "environ(" in out.output
    assert CANARY not in out.output
    assert sbx.workdir in out.output  # HOME/TMPDIR: the child's own dir


# -- full escape: secrets -----------------------------------------------------------------------


def test_environment_holds_only_the_allowlist(sbx, pool):
    env = raw(sbx, "import os\nresult = dict(os.environ)")
    assert CANARY not in repr(env)
    assert set(env) <= set(pool.env) | {"HOME", "TMPDIR", "PWD"}
    assert env["HOME"] == env["TMPDIR"] == sbx.workdir
    # dotenv cannot re-load anything in the zygote or the child
    assert raw(sbx, "import dotenv\nresult = dotenv.load_dotenv.__name__") == "_no_dotenv"


def test_zygote_was_started_with_a_clean_environment(pool):
    with open(f"/proc/{pool.zygote_pid}/environ", "rb") as f:
        environ = f.read()
    assert CANARY.encode() not in environ
    assert b"DATABASE_URL" not in environ


def test_proc_does_not_leak_other_processes_secrets(sbx, pool):
    worker, zygote = os.getpid(), pool.zygote_pid
    code = f"""
import os
found, readable = [], []
for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['{worker}', '{zygote}', '1']:
    for name in ('environ', 'cmdline', 'mem'):
        try:
            with open('/proc/%s/%s' % (pid, name), 'rb') as f:
                data = f.read(1 << 16)
        except OSError:
            continue
        readable.append('%s/%s' % (pid, name))
        if {CANARY!r}.encode() in data:
            found.append('%s/%s' % (pid, name))
result = {{'found': found, 'readable': readable, 'visible': os.listdir('/proc')}}
"""
    result = raw(sbx, code)
    assert result["found"] == []
    for name in ("environ", "cmdline", "mem"):
        assert f"{worker}/{name}" not in result["readable"]
        assert f"{zygote}/{name}" not in result["readable"]
    if ROOT:  # hidepid: the child sees no other process at all
        visible = {p for p in result["visible"] if p.isdigit()}
        assert visible == {str(sbx.pid)}


def test_cannot_read_secret_files_or_other_sandboxes(pool, sbx):
    other = pool.spawn(execution_id="other")
    try:
        raw(other, f"with open('secret.txt', 'w') as f:\n    f.write({CANARY!r})\nresult = 1")
        code = f"""
import os
result = {{}}
for path in ({other.workdir!r} + '/secret.txt', '/etc/shadow', '/root/.bash_history',
             '/var/run/postgresql/.s.PGSQL.5432.lock'):
    try:
        with open(path) as f:
            result[path] = f.read()
    except OSError as e:
        result[path] = 'error:' + type(e).__name__
result['root'] = os.listdir('/root') if os.path.isdir('/root') else []
"""
        result = raw(sbx, code)
        assert CANARY not in repr(result)
        for path, value in result.items():
            if path != "root":
                assert value.startswith("error:"), (path, value)
        if ROOT:
            assert set(result["root"]) <= {".pyenv"}  # only the bind-mounted interpreter
    finally:
        other.close()


# -- full escape: network ------------------------------------------------------------------------


def test_no_network_even_with_raw_syscalls(sbx):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        code = NET_HELPERS + (
            f"result = {{'listener': tcp({port}), 'postgres': tcp(5432), 'redis': tcp(6379),"
            " 'public': tcp(443, (1, 1, 1, 1)),"
            " 'pg_unix': unix('/var/run/postgresql/.s.PGSQL.5432'),"
            " 'mysql_unix': unix('/run/mysqld/mysqld.sock'),"
            " 'ifaces': open('/proc/net/dev').read()}"
        )
        result = raw(sbx, code)
        for key in ("listener", "postgres", "redis", "public", "pg_unix", "mysql_unix"):
            assert result[key] != "connected", key
        ifaces = [line.split(":")[0].strip() for line in result["ifaces"].splitlines()[2:]]
        assert ifaces == ["lo"]  # a private network namespace, loopback down
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever arrived
    finally:
        listener.close()


def test_sandboxes_cannot_reach_each_other_over_loopback(pool, sbx):
    """The sandboxes of one pool share a network namespace whose loopback is down: an escaped
    child may listen on 127.0.0.1, but nothing can connect to it, not even another sandbox."""
    listen = NET_HELPERS + (
        "fd = libc.socket(2, 1, 0)\n"
        "ip = bytes((127, 0, 0, 1))\n"
        "addr = struct.pack('<H', 2) + struct.pack('!H', 47001) + ip + bytes(8)\n"
        "rc = libc.bind(fd, addr, len(addr))\n"
        "result = {'bind': rc, 'errno': ctypes.get_errno(), 'listen': libc.listen(fd, 1)}"
    )
    bound = raw(sbx, listen)
    assert (bound["bind"], bound["listen"]) == (0, 0)  # listening in the shared namespace
    other = pool.spawn(execution_id="escape-peer")
    try:
        reached = raw(other, NET_HELPERS + "result = [tcp(47001), tcp(47001)]")
        itself = raw(sbx, NET_HELPERS + "result = tcp(47001)")
    finally:
        other.close()
    assert reached == ["errno:101", "errno:101"]  # ENETUNREACH: loopback is down
    assert itself == "errno:101"


def test_services_are_reachable_from_the_worker_so_the_network_test_means_something():
    reachable = [p for p in (5432, 6379) if tcp_reachable_from_worker(p)]
    assert reachable == [5432, 6379], "the suite's PostgreSQL and Redis must be listening"


def test_socket_module_is_refused_inside_the_child(sbx):
    code = """
import socket
result = []
for attempt in (lambda: socket.socket(), lambda: socket.create_connection(('127.0.0.1', 5432)),
                lambda: socket.socketpair()):
    try:
        attempt()
        result.append('ok')
    except PermissionError:
        result.append('refused')
"""
    assert raw(sbx, code) == ["refused", "refused", "refused"]


def test_socket_blocked_fallback_mode():
    with SandboxPool(
        limits=LIMITS, authorized_imports=[], isolation="socket-blocked", prefork=1,
        _allow_raw_exec=True,
    ) as p:  # fmt: skip
        assert p.isolation_level == "socket-blocked"
        ex = p.spawn(execution_id="fallback")
        try:
            assert ex.isolation["network"] == "socket-blocked"
            code = (
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 6379))\n"
                "    result = 'connected'\nexcept PermissionError:\n    result = 'refused'"
            )
            assert raw(ex, code) == "refused"
        finally:
            ex.close()


# -- full escape: processes and privileges -------------------------------------------------------


def test_cannot_create_processes_or_threads(sbx):
    code = """
import os, posix, subprocess, threading, ctypes
result = {}
for name, attempt in [
    ('os.fork', os.fork), ('posix.fork', posix.fork),
    ('subprocess', lambda: subprocess.run(['true'])), ('system', lambda: os.system('true')),
    ('posix_spawn', lambda: os.posix_spawn('/bin/true', ['true'], {})),
    ('thread', lambda: threading.Thread(target=lambda: None).start()),
]:
    try:
        attempt()
        result[name] = 'ok'
    except Exception as e:
        result[name] = type(e).__name__
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.fork()
if pid == 0:
    libc._exit(0)
result['libc.fork'] = [pid, ctypes.get_errno()]
"""
    result = raw(sbx, code)
    for name in ("os.fork", "posix.fork", "subprocess", "system", "posix_spawn"):
        assert result[name] == "PermissionError", name
    if ROOT:
        # Kernel-enforced: RLIMIT_NPROC=0 for an unprivileged uid; threads too.
        assert result["libc.fork"] == [-1, 11]  # EAGAIN
        assert result["thread"] == "RuntimeError"


def test_cannot_regain_privileges_or_touch_other_processes(pool, sbx):
    other = pool.spawn(execution_id="victim")
    try:
        code = f"""
import os, ctypes
libc = ctypes.CDLL(None, use_errno=True)
def rc(value):
    return [value, ctypes.get_errno()] if value != 0 else [0, 0]
result = {{
    'uid': os.getuid(),
    'setuid0': rc(libc.setuid(0)),
    'unshare_net': rc(libc.unshare(0x40000000)),
    'mount': rc(libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)),
    'kill_worker': rc(libc.kill({os.getpid()}, 0)),
    'kill_zygote': rc(libc.kill({pool.zygote_pid}, 0)),
    'kill_other_sandbox': rc(libc.kill({other.pid}, 9)),
    'ptrace_worker': rc(libc.ptrace(16, {os.getpid()}, None, None)),
}}
"""
        result = raw(sbx, code)
        if ROOT:
            assert result["uid"] != 0
            for key, outcome in result.items():
                if key != "uid":
                    assert outcome[0] == -1, (key, outcome)
        assert other("1 + 1").output == 2  # the other sandbox survived
    finally:
        other.close()


def test_filesystem_is_read_only_outside_the_workdir_and_capped(sbx):
    code = """
import os
result = {}
for path in ('/etc/pwned', '/pwned', '/tmp/pwned', '/var/tmp/pwned', '/dev/shm/pwned'):
    try:
        open(path, 'w').close()
        result[path] = 'written'
    except OSError as e:
        result[path] = type(e).__name__
with open('ok.txt', 'w') as f:
    f.write('fine')
result['cwd'] = os.getcwd()
try:
    with open('big.bin', 'wb') as f:
        f.write(b'x' * (11 * 2**20))   # RLIMIT_FSIZE is 10 MiB
    result['fsize'] = 'written'
except OSError as e:
    result['fsize'] = e.errno
result['disk'] = 'ok'
try:
    for i in range(4):                # the work dir is a 16 MiB tmpfs
        with open('part%d.bin' % i, 'wb') as f:
            f.write(b'x' * (8 * 2**20))
except OSError as e:
    result['disk'] = e.errno
"""
    result = raw(sbx, code)
    for path in ("/etc/pwned", "/pwned", "/tmp/pwned", "/var/tmp/pwned", "/dev/shm/pwned"):
        assert result[path] != "written", path
        assert not os.path.exists(path)
    assert result["cwd"] == sbx.workdir
    assert result["fsize"] == 27  # EFBIG
    if ROOT:
        assert result["disk"] == 28  # ENOSPC


def test_strict_netns_isolation_can_be_required():
    with SandboxPool(limits=LIMITS, authorized_imports=[], isolation="netns", prefork=0) as p:
        assert p.isolation_level == "netns"
        ex = p.spawn(execution_id="strict")
        try:
            assert ex("3 * 3").output == 9
        finally:
            ex.close()


def test_raw_exec_is_disabled_by_default():
    with SandboxPool(limits=LIMITS, authorized_imports=[], prefork=0) as p:
        ex = p.spawn(execution_id="noraw")
        try:
            with pytest.raises(PermissionError):
                ex._raw_exec("result = 1")
            # and a forged request is a protocol violation: the child exits
            ex._send({"op": "exec_raw", "code": "result = 1"}, ex._default_deadline())
            with pytest.raises(SandboxError):
                ex("1")
        finally:
            ex.close()


# -- unprivileged worker (fallback layers) -------------------------------------------------------

UNPRIVILEGED_HELPER = r"""
import json, os, sys
from agent_platform.runtime import sandbox_child as sc

def blocked_ancestor(path):
    cur = "/"
    for part in path.strip("/").split("/"):
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & 0o001:
            return cur
    return None

try:  # expose the Python installation to an unprivileged uid, in a private mount namespace
    sc._unshare(sc.CLONE_NEWNS)
    sc._mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p}
    paths = {p for p in paths if os.path.isdir(p)}
    paths = {p for p in paths if not any(p.startswith(o + "/") for o in paths)}
    plan = [(p, b, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in sorted(paths)
            if (b := blocked_ancestor(p))]
    for blocked in sorted({b for _, b, _ in plan}):
        sc._mount("tmpfs", blocked, "tmpfs", 0, "mode=0755")
    for path, _, fd in plan:
        os.makedirs(path, exist_ok=True)
        sc._mount(f"/proc/self/fd/{fd}", path, None, sc.MS_BIND, None)
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    from agent_platform.runtime.sandbox import SandboxLimits, SandboxPool
except Exception as e:
    print("setup:", e, file=sys.stderr)
    sys.exit(77)

PORT = int(sys.argv[1])
CODE = '''
import ctypes, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.fork()
if pid == 0:
    libc._exit(0)
result = {"fork": [pid, ctypes.get_errno()]}
fd = libc.socket(2, 1, 0)
addr = struct.pack("<H", 2) + struct.pack("!H", %d) + bytes([127, 0, 0, 1]) + bytes(8)
result["raw_tcp"] = libc.connect(fd, addr, len(addr))
try:
    socket.socket()
    result["socket_module"] = "ok"
except PermissionError:
    result["socket_module"] = "refused"
''' % PORT
report = {}
for mode in ("auto", "socket-blocked"):
    limits = SandboxLimits(step_timeout_s=5)
    with SandboxPool(limits=limits, authorized_imports=[], isolation=mode, prefork=0,
                     _allow_raw_exec=True) as pool:
        ex = pool.spawn(execution_id=mode)
        report[mode] = {
            "level": pool.isolation_level,
            "layers": pool.isolation_details,
            "value": ex("6 * 7").output,
            "raw": ex._raw_exec(CODE).output,
        }
        ex.close()
print(json.dumps(report))
"""


@pytest.mark.skipif(not ROOT, reason="needs root to impersonate an unprivileged worker")
def test_unprivileged_worker_falls_back_to_the_strongest_available_layers():
    import subprocess

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-c", UNPRIVILEGED_HELPER, str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/"},
        )
    finally:
        listener.close()
    # 77: the host cannot run a worker as uid 65534 (this project's machines can)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    auto, blocked = report["auto"], report["socket-blocked"]
    assert auto["value"] == blocked["value"] == 42
    # Unprivileged: no mount namespace / privilege drop, but RLIMIT_NPROC=0 is enforced.
    for run in (auto, blocked):
        assert run["layers"]["drop_privileges"] is False
        assert run["raw"]["fork"] == [-1, 11]
        assert run["raw"]["socket_module"] == "refused"
    assert blocked["level"] == "socket-blocked"
    if auto["layers"].get("network_namespace_via_userns"):
        assert auto["level"] == "netns"
        assert auto["raw"]["raw_tcp"] == -1  # no route even with raw syscalls
    else:
        assert auto["level"] == "socket-blocked"


def test_child_inherits_no_file_descriptors(sbx):
    code = """
import os
fds = {}
for fd in os.listdir('/proc/self/fd'):
    try:
        fds[fd] = os.readlink('/proc/self/fd/' + fd)
    except OSError:
        pass
result = fds
"""
    fds = raw(sbx, code)
    assert fds["0"] == fds["1"] == fds["2"] == "/dev/null"
    assert fds["3"].startswith("socket:")  # the channel to the worker
    others = {fd: target for fd, target in fds.items() if fd not in {"0", "1", "2", "3"}}
    # at most the directory listdir() itself has open
    assert all(target.startswith("/proc/") for target in others.values()), others


def test_child_can_still_import_the_stdlib_after_dropping_privileges(sbx):
    # The interpreter lives under a 0700 directory here (/root/.pyenv): the child re-binds it.
    code = "import csv, colorsys, wave\nresult = csv.__name__ + colorsys.__name__ + wave.__name__"
    assert raw(sbx, code) == "csvcolorsyswave"
