"""Process sandbox: executor behaviour, tool brokering, resource limits, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from smolagents import CodeAgent
from smolagents.default_tools import FinalAnswerTool
from smolagents.local_python_executor import InterpreterError
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.tools import Tool
from smolagents.utils import AgentError

from agent_platform.runtime import sandbox_protocol as proto
from agent_platform.runtime.sandbox import (
    SandboxCrashed,
    SandboxError,
    SandboxExecutor,
    SandboxKilled,
    SandboxLimits,
    SandboxPool,
    SandboxTimeout,
    _sweep_stale_base_dirs,
)
from tests.unit.sandbox_pools import spawned, started_pool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

CANARY = "canary-7f3e9a1c-do-not-leak"
LIMITS = SandboxLimits(
    step_timeout_s=2,
    memory_bytes=256 * 2**20,
    cpu_seconds=20,
    max_output_bytes=8 * 1024,
    max_tool_calls=5,
    max_tool_result_bytes=16 * 1024,
)


@pytest.fixture(scope="module")
def pool():
    secrets = {"AGENT_PLATFORM_CANARY": CANARY, "DATABASE_URL": f"postgres://{CANARY}"}
    with started_pool(
        secrets, limits=LIMITS, authorized_imports=["math", "json"], prefork=2, _allow_raw_exec=True
    ) as p:
        yield p


@pytest.fixture
def sbx(pool):
    with spawned(pool, "test") as ex:
        yield ex


class CountingTool(Tool):
    name = "lookup"
    description = "Look a key up; returns a dict"
    inputs = {"key": {"type": "string", "description": "the key"}}
    output_type = "object"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, str]] = []

    def forward(self, key: str) -> Any:
        self.calls.append((key, os.getpid(), threading.current_thread().name))
        if key == "boom":
            raise ValueError("the tool exploded")
        if key == "big":
            return "y" * 100_000
        if key == "object":
            return {1, 2}
        return {"key": key, "pid": os.getpid(), "items": [1, 2, 3]}


class SecretTool(Tool):
    name = "secret_tool"
    description = "must never run"
    inputs = {}
    output_type = "string"

    def forward(self) -> str:  # pragma: no cover - must not be reachable
        raise AssertionError("disabled tool ran")


def children_of(ppid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of the processes whose parent is ``ppid`` (scans /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == ppid:
            out.append((int(entry), fields[0]))
    return out


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[0]


def assert_healthy(pool: SandboxPool) -> None:
    ex = pool.spawn(execution_id="health")
    try:
        out = ex("x = 20\nx + 22")
        assert out.output == 42
    finally:
        ex.close()


# -- basics ------------------------------------------------------------------------------------


def test_isolation_level_is_netns(pool):
    assert pool.isolation_level == "netns"
    health = pool.health()
    assert health["running"] and health["isolation_level"] == "netns"
    assert health["layers"]["network_namespace"] is True


def test_child_reports_its_isolation(sbx):
    layers = sbx.isolation
    assert layers["network"] == "netns"
    if os.geteuid() == 0:
        assert layers["privileges_dropped"] is True
        assert layers["uid"] != 0
        assert layers["mount_namespace"] is True
        assert layers["kernel_blocks_fork"] is True
    assert layers["rlimits"]["as"] == LIMITS.memory_bytes


def test_variables_persist_and_logs_are_captured(sbx):
    sbx.send_variables({"start": 40, "names": ["a", "b"]})
    out = sbx("total = start + 1\nprint('total is', total)\ntotal")
    assert (out.output, out.logs, out.is_final_answer) == (41, "total is 41\n", False)
    out = sbx("total += 1\nprint(names)\ntotal")
    assert out.output == 42
    assert out.logs == "['a', 'b']\n"  # logs are per call


def test_final_answer(sbx):
    out = sbx("answer = {'value': 6 * 7}\nfinal_answer(answer)")
    assert out.is_final_answer is True
    assert out.output == {"value": 42}


def test_custom_final_answer_tool_is_brokered(sbx):
    class CheckedFinalAnswer(FinalAnswerTool):
        def forward(self, answer):
            return {"checked": answer, "pid": os.getpid()}

    sbx.send_tools({"final_answer": CheckedFinalAnswer()})
    out = sbx("final_answer(7)")
    assert out.is_final_answer is True
    assert out.output == {"checked": 7, "pid": os.getpid()}  # ran in the worker


def test_non_json_outputs_come_back_as_text(sbx):
    out = sbx("{1, 2, 3}")
    assert out.output == "{1, 2, 3}"
    out = sbx("final_answer({3})")
    assert out.is_final_answer and out.output == "{3}"


def test_interpreter_error_raises_with_message(sbx):
    with pytest.raises(InterpreterError, match="ZeroDivisionError: division by zero"):
        sbx("print('before')\n1 / 0")
    assert sbx.state["_print_outputs"] == "before\n"  # what CodeAgent shows on errors
    with pytest.raises(InterpreterError, match="Import of os is not allowed"):
        sbx("import os")
    with pytest.raises(InterpreterError, match="Code parsing failed"):
        sbx("def (:")
    assert sbx("1 + 1").output == 2  # still alive


def test_sandbox_errors_are_not_agent_errors():
    assert not issubclass(SandboxError, AgentError)
    for cls in (SandboxCrashed, SandboxTimeout, SandboxKilled):
        assert issubclass(cls, SandboxError)


# -- tools -------------------------------------------------------------------------------------


def test_tool_runs_in_the_parent_and_returns_values(sbx):
    tool = CountingTool()
    sbx.send_tools({"lookup": tool, "final_answer": FinalAnswerTool()})
    out = sbx("r = lookup(key='abc')\nr2 = lookup('def')\n[r, r2['items'][1]]")
    result, item = out.output
    assert result == {"key": "abc", "pid": os.getpid(), "items": [1, 2, 3]}
    assert item == 2
    assert [c[0] for c in tool.calls] == ["abc", "def"]
    assert {c[1] for c in tool.calls} == {os.getpid()}
    assert sbx.pid != os.getpid()
    assert sbx.tool_calls == 2


def test_tool_exception_is_raised_in_model_code(sbx):
    sbx.send_tools({"lookup": CountingTool()})
    out = sbx("try:\n    lookup(key='boom')\nexcept Exception as e:\n    msg = str(e)\nmsg")
    assert "ValueError: the tool exploded" in out.output
    with pytest.raises(InterpreterError, match="the tool exploded"):
        sbx("lookup(key='boom')")


def test_disabled_tool_is_refused(sbx):
    sbx.send_tools({"lookup": CountingTool()})
    with pytest.raises(InterpreterError, match="secret_tool"):
        sbx("secret_tool()")
    # Even a child that forges the request cannot reach a tool that was not sent.
    out = sbx._raw_exec(
        "try:\n    call_tool('secret_tool')\nexcept Exception as e:\n    result = str(e)"
    )
    assert "is not enabled for this execution" in out.output


def test_tool_call_cap(sbx):
    tool = CountingTool()
    sbx.send_tools({"lookup": tool})
    with pytest.raises(InterpreterError, match="tool call limit reached"):
        sbx("for i in range(10):\n    lookup(key=str(i))")
    assert len(tool.calls) == LIMITS.max_tool_calls


def test_tool_result_is_capped_and_serialised(sbx):
    sbx.send_tools({"lookup": CountingTool()})
    out = sbx("len(lookup(key='big'))")
    assert out.output <= LIMITS.max_tool_result_bytes
    out = sbx("lookup(key='object')")
    assert out.output == "{1, 2}"


def test_send_variables_rejects_non_json(sbx):
    with pytest.raises(TypeError, match="JSON"):
        sbx.send_variables({"obj": object()})


def test_codeagent_runs_on_the_sandbox(pool):
    """End to end: a CodeAgent with a scripted model, a tool and final_answer."""
    steps = [
        "Thought: look it up\n<code>\ninfo = lookup(key='k1')\nprint(info['items'])\n</code>",
        "Thought: done\n<code>\nfinal_answer(sum(info['items']) * 7)\n</code>",
    ]

    class ScriptedModel(Model):
        def generate(self, messages, stop_sequences=None, **kwargs):
            return ChatMessage(role=MessageRole.ASSISTANT, content=steps.pop(0))

    tool = CountingTool()
    ex = pool.spawn(execution_id="agent")
    try:
        agent = CodeAgent(tools=[tool], model=ScriptedModel(), executor=ex, max_steps=4)
        assert agent.run("what is it?") == 42
        assert len(tool.calls) == 1
    finally:
        ex.close()


# -- resource abuse ------------------------------------------------------------------------------


def test_infinite_loop_is_stopped(pool, sbx):
    started = time.monotonic()
    with pytest.raises((InterpreterError, SandboxTimeout)):
        sbx("while True:\n    pass")
    assert time.monotonic() - started < LIMITS.step_timeout_s + 2
    assert_healthy(pool)


def test_raw_infinite_loop_hits_the_wall_clock(pool, sbx):
    started = time.monotonic()
    with pytest.raises(SandboxTimeout, match="exceeded 2 s"):
        sbx._raw_exec("while True:\n    pass")
    assert time.monotonic() - started < LIMITS.step_timeout_s + 1
    assert sbx.terminal_error is not None
    with pytest.raises(SandboxTimeout):  # the sandbox is finished
        sbx("1")
    assert_healthy(pool)


def test_huge_power_is_killed_by_the_wall_clock(pool, sbx):
    started = time.monotonic()
    with pytest.raises(SandboxTimeout):
        sbx("10 ** 10**8")
    assert time.monotonic() - started < LIMITS.step_timeout_s + 1
    assert_healthy(pool)


@pytest.mark.parametrize(
    "code",
    [
        "'x' * 10**10",
        "chunks = []\nfor i in range(100000):\n    chunks.append('x' * 10**7)",
    ],
)
def test_memory_bomb(pool, sbx, code):
    with pytest.raises((InterpreterError, SandboxCrashed)) as info:
        sbx(code)
    assert "MemoryError" in str(info.value) or "memory" in str(info.value)
    assert_healthy(pool)


def test_huge_print_is_capped(pool, sbx):
    out = sbx("for i in range(2000):\n    print('x' * 10000)\n'done'")
    assert out.output == "done"
    assert len(out.logs) < LIMITS.max_output_bytes + 500
    assert "truncated" in out.logs
    out = sbx("'y' * 10**6")
    assert len(out.output) < LIMITS.max_output_bytes + 200
    out = sbx._raw_exec("for i in range(1000):\n    print('z' * 10000)")
    assert len(out.logs) < LIMITS.max_output_bytes + 500


def test_deep_recursion(pool, sbx):
    with pytest.raises(InterpreterError, match="Recursion"):
        sbx("def f(n):\n    return f(n + 1)\nf(0)")
    assert sbx("2 + 2").output == 4


def test_fork_attempt_fails(pool, sbx):
    with pytest.raises(InterpreterError):
        sbx("import os\nos.fork()")
    out = sbx._raw_exec(
        "import os\ntry:\n    os.fork()\n    result = 'forked'\n"
        "except Exception as e:\n    result = type(e).__name__"
    )
    assert out.output == "PermissionError"
    assert_healthy(pool)


def test_cpu_limit_kills_the_child():
    limits = SandboxLimits(cpu_seconds=1, step_timeout_s=15, memory_bytes=256 * 2**20)
    with SandboxPool(limits=limits, authorized_imports=[], prefork=1, _allow_raw_exec=True) as p:
        ex = p.spawn(execution_id="cpu")
        started = time.monotonic()
        with pytest.raises(SandboxCrashed, match="CPU time limit"):
            ex._raw_exec("while True:\n    pass")
        assert time.monotonic() - started < 5
        ex.close()
        assert_healthy(p)


def test_oversized_frame_from_child_is_rejected(pool, sbx):
    with pytest.raises(SandboxCrashed, match="protocol violation"):
        sbx._raw_exec(
            "import struct\nchannel.sendall(struct.pack('>I', 2**31) + b'x' * 100)\n"
            "import time\ntime.sleep(5)"
        )
    assert_healthy(pool)


def test_garbage_frame_from_child_is_rejected(pool, sbx):
    with pytest.raises(SandboxCrashed, match="protocol violation"):
        sbx._raw_exec("import struct\nchannel.sendall(struct.pack('>I', 3) + b'{{{')")


def test_child_death_is_reported(pool, sbx):
    with pytest.raises(SandboxCrashed, match="exit code 3"):
        sbx._raw_exec("import os\nos._exit(3)")
    with pytest.raises(SandboxCrashed):
        sbx("1")


# -- kill / close / lifecycle ----------------------------------------------------------------------


def test_kill_from_another_thread_interrupts_a_running_call(pool, sbx):
    errors: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            sbx("x = 10 ** 10**9")
        except BaseException as e:
            errors.append(e)
        finished.set()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    killed_at = time.monotonic()
    sbx.kill("cancelled by user")
    assert finished.wait(2)
    assert time.monotonic() - killed_at < 0.5
    assert len(errors) == 1 and isinstance(errors[0], SandboxKilled)
    assert errors[0].reason == "cancelled by user"
    with pytest.raises(SandboxKilled):
        sbx("1")
    t.join()
    assert_healthy(pool)


def test_kill_before_call(sbx):
    sbx.kill()
    with pytest.raises(SandboxKilled, match="cancelled"):
        sbx("1 + 1")


def test_children_inherit_a_small_zygote(sbx):
    """Every memory mapping of the zygote is copied by each fork and torn down by each exit:
    it imports the interpreter without the modules that would only add mappings (jinja2 and
    the OpenSSL behind hashlib, python-dotenv and the compression libraries behind shutil)."""
    loaded = sbx._raw_exec("import sys\nresult = sorted(sys.modules)").output
    assert "smolagents.local_python_executor" in loaded
    heavy = {"jinja2", "markupsafe", "hashlib", "_hashlib", "shutil", "zlib", "bz2", "lzma"}
    assert heavy.isdisjoint(loaded)
    dotenv_file = sbx._raw_exec("import dotenv\nresult = getattr(dotenv, '__file__', None)")
    assert dotenv_file.output is None  # a stand-in whose load_dotenv does nothing


def test_close_is_idempotent_and_reaps(pool):
    ex = pool.spawn(execution_id="close")
    assert ex("1").output == 1
    # the work dir is a tmpfs in the zygote's mount namespace: seen through its /proc root
    workdir = f"/proc/{pool.zygote_pid}/root{ex.workdir}"
    pid = ex.pid
    assert os.path.isdir(workdir)
    assert os.path.ismount(workdir) == pool.isolation_details["mount_namespace"]
    ex.close()
    ex.close()
    assert process_state(pid) is None  # reaped, not a zombie
    assert not os.path.exists(workdir)  # unmounted and removed
    assert ex.closed
    with pytest.raises(SandboxError):
        ex("1")


def test_close_without_waiting_ends_each_child_and_the_zygote_reaps_it(pool):
    executors = [pool.spawn(execution_id=f"nowait-{i}") for i in range(12)]
    for ex in executors:
        assert ex("1").output == 1
    pids = {ex.pid for ex in executors}
    workdirs = [f"/proc/{pool.zygote_pid}/root{ex.workdir}" for ex in executors]
    for ex in executors:
        ex.close(wait=False)
        assert ex.closed
        with pytest.raises(SandboxError):
            ex("1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = pids & {pid for pid, _ in children_of(pool.zygote_pid)}
        if not left and not any(os.path.exists(w) for w in workdirs):
            break
        time.sleep(0.01)
    assert not pids & {pid for pid, _ in children_of(pool.zygote_pid)}  # reaped, no zombies
    assert not [w for w in workdirs if os.path.exists(w)]  # unmounted and removed
    assert_healthy(pool)


def test_close_without_waiting_ends_a_child_that_ignores_its_channel(pool):
    ex = pool.spawn(execution_id="busy")
    assert ex("1").output == 1
    # the child sleeps and reads nothing: only the zygote's kill on release can end it soon
    ex._send({"op": "exec_raw", "code": "import time\ntime.sleep(60)"}, time.monotonic() + 5)
    time.sleep(0.1)
    pid = ex.pid
    assert process_state(pid) not in (None, "Z")
    ex.close(wait=False)
    deadline = time.monotonic() + 5
    while process_state(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_state(pid) is None  # killed and reaped, long before its sleep ends
    assert_healthy(pool)


def test_children_are_never_reused_and_spawn_is_thread_safe(pool):
    results: dict[int, Any] = {}
    executors: list[SandboxExecutor] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        ex = pool.spawn(execution_id=f"c{i}")
        with lock:
            executors.append(ex)
        results[i] = (ex.pid, ex(f"v = {i}\nv * 2").output)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r[1] for i, r in results.items()} == {i: 2 * i for i in range(8)}
    assert len({r[0] for r in results.values()}) == 8
    zygote = pool.zygote_pid
    for ex in executors:
        ex.close()
    kids = children_of(zygote)
    assert all(state != "Z" for _, state in kids), kids
    assert not {pid for pid, _ in kids} & {r[0] for r in results.values()}


def settled_children(pool: SandboxPool, count: int, timeout_s: float = 10) -> list[int]:
    """The zygote's children once there are `count` of them (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        kids = [pid for pid, state in children_of(pool.zygote_pid) if state != "Z"]
        if len(kids) == count or time.monotonic() > deadline:
            return kids
        time.sleep(0.02)


def test_request_hands_the_child_over_at_first_use_with_what_was_sent_before(pool):
    """An execution asks for its sandbox before its first model call: nothing waits for the
    zygote until code runs, and tools and variables sent meanwhile reach the child first."""
    tool = CountingTool()
    ex = pool.request(execution_id="early")
    try:
        ex.send_tools({"lookup": tool, "final_answer": FinalAnswerTool()})
        ex.send_variables({"x": 20})
        assert ex.pid is None  # only asked for so far
        out = ex("r = lookup('k')\nx + len(r['items'])")
        assert out.output == 23
        assert ex.pid is not None and ex.pid in pool.live_pids()
        assert ex.isolation["network"] == "netns"
    finally:
        ex.close()


@pytest.mark.parametrize("give_up", ["kill", "close"])
def test_a_sandbox_given_up_before_its_child_was_taken_leaves_no_child(give_up):
    p = SandboxPool(limits=LIMITS, authorized_imports=[], prefork=1)
    p.start()
    try:
        assert len(settled_children(p, 1)) == 1  # the pre-forked child
        ex = p.request(execution_id="unwanted")
        getattr(ex, give_up)()  # at once: the zygote's reply is usually still on its way
        with pytest.raises(SandboxError):
            ex("1")
        ex.close()
        later = p.request(execution_id="wanted-then-dropped")
        time.sleep(0.3)  # the reply has come: the executor must take the child to end it
        later.close()
        assert later.pid is not None and process_state(later.pid) is None  # reaped
        assert len(settled_children(p, 1)) == 1  # nothing else left
        assert_healthy(p)
    finally:
        p.stop()


def test_a_zygote_that_does_not_answer_fails_the_first_use_and_its_late_child_is_dropped():
    p = SandboxPool(limits=LIMITS, authorized_imports=[], prefork=1, spawn_timeout_s=0.5)
    p.start()
    try:
        assert len(settled_children(p, 1)) == 1
        zygote = p.zygote_pid
        assert zygote is not None
        os.kill(zygote, signal.SIGSTOP)
        try:
            ex = p.request(execution_id="slow")  # returns at once
            started = time.monotonic()
            with pytest.raises(SandboxCrashed, match=r"took more than 0\.5 s"):
                ex("1")
            assert 0.4 < time.monotonic() - started < 5
        finally:
            os.kill(zygote, signal.SIGCONT)
        # the reply comes after all: the pool discards that child
        assert len(settled_children(p, 1)) == 1
        with pytest.raises(SandboxCrashed, match="took more than"):
            ex("1")
        ex.close()
        assert_healthy(p)
    finally:
        p.stop()


def test_a_request_pending_when_the_pool_stops_fails_its_first_use():
    p = SandboxPool(limits=LIMITS, authorized_imports=[], prefork=0)
    p.start()
    zygote = p.zygote_pid
    assert zygote is not None
    os.kill(zygote, signal.SIGSTOP)  # the request stays unanswered
    ex = p.request(execution_id="orphaned")
    p.stop()  # kills the stopped zygote
    with pytest.raises(SandboxCrashed, match="pool stopped"):
        ex("1")
    ex.close()


def test_stop_kills_everything_and_leaves_no_zombies():
    p = SandboxPool(limits=LIMITS, authorized_imports=[], prefork=2)
    p.start()
    zygote = p.zygote_pid
    a, b = p.spawn(execution_id="a"), p.spawn(execution_id="b")
    assert a("1").output == 1
    pids = [a.pid, b.pid] + [pid for pid, _ in children_of(zygote)]
    base_dir = os.path.dirname(a.workdir)
    p.stop()
    p.stop()  # idempotent
    assert process_state(zygote) is None
    for pid in pids:
        assert process_state(pid) is None
    assert not [c for c in children_of(os.getpid()) if c[1] == "Z"]
    assert not os.path.exists(base_dir)
    with pytest.raises(SandboxCrashed, match="pool stopped"):
        a("1")
    a.close()
    b.close()
    with pytest.raises(SandboxCrashed, match="stopped"):
        p.spawn(execution_id="after-stop")
    # an explicitly restarted pool works again
    p.start()
    try:
        assert_healthy(p)
    finally:
        p.stop()


def test_zygote_death_is_reported_and_the_pool_recovers():
    p = SandboxPool(limits=LIMITS, authorized_imports=[], prefork=1)
    p.start()
    try:
        ex = p.spawn(execution_id="orphan")
        assert ex("1").output == 1
        os.kill(p.zygote_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5  # the child follows (PR_SET_PDEATHSIG)
        while process_state(ex.pid) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(SandboxCrashed, match="zygote is gone"):
            ex("2")
        ex.close()
        assert_healthy(p)  # spawn() restarted the zygote
    finally:
        p.stop()


def test_children_die_with_the_worker(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, time\n"
        "from agent_platform.runtime.sandbox import SandboxPool, SandboxLimits\n"
        "p = SandboxPool(limits=SandboxLimits(), authorized_imports=[], prefork=1)\n"
        "p.start()\n"
        "ex = p.spawn(execution_id='x')\n"
        "ex('1')\n"
        "print(p.zygote_pid, ex.pid, ex.workdir, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        zygote_s, child_s, workdir = proc.stdout.readline().split()
        zygote, child = int(zygote_s), int(child_s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if process_state(zygote) in (None, "Z") and process_state(child) in (None, "Z"):
                break
            time.sleep(0.05)
        assert process_state(zygote) in (None, "Z")
        assert process_state(child) in (None, "Z")
        # its temp dirs are swept by the next pool that starts (their lock is free)
        base_dir = os.path.dirname(workdir)
        assert os.path.isdir(base_dir)
        _sweep_stale_base_dirs(os.path.dirname(base_dir), min_age_s=0)
        assert not os.path.exists(base_dir)
    finally:
        proc.kill()
        proc.wait()


def test_protocol_rejects_oversized_frames_before_allocating():
    import socket

    a, b = socket.socketpair()
    try:
        a.sendall(proto.HEADER.pack(2**30))
        with pytest.raises(proto.FrameTooLarge):
            proto.recv_frame(b, max_frame=1024, deadline=time.monotonic() + 1)
        with pytest.raises(proto.FrameTooLarge):
            proto.encode_frame({"op": "x", "v": "y" * 2048}, max_frame=1024)
        proto.send_frame(a, {"op": "ping", "v": [1, "é"]})
        assert proto.recv_frame(b, deadline=time.monotonic() + 1) == {"op": "ping", "v": [1, "é"]}
        a.close()
        with pytest.raises(proto.ChannelClosed):
            proto.recv_frame(b, deadline=time.monotonic() + 1)
    finally:
        a.close()
        b.close()


def test_fit_text():
    text, cut = proto.fit_text("a" * 1000, 100)
    assert cut and proto.json_size(text) <= 100
    assert proto.fit_text("short", 100) == ("short", False)
