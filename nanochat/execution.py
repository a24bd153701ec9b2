"""
A sandbox for running model-written Python (HumanEval completions, tool calls): `execute(code)`.

    from nanochat.execution import execute
    result = execute("print(1 + 1)", timeout=5.0, memory_limit_mb=256)
    result.success, result.stdout  # True, "2\\n"

The caller never runs the code itself. Each call starts a fresh interpreter (`sys.executable -I`
on nanochat/execution_child.py, not a fork of the caller: none of its state, modules or files leak
in), which builds the walls below and runs the code in a process tree of its own; its layout
(keeper, init, worker) is described in that file. execute() returns within `timeout` + GRACE
seconds whatever the code does, and when it returns every process the code started has exited and
everything the call created (cgroups, mounts, files) is gone.

The walls (Linux, started as root; each one is named in `ExecutionResult.isolation`):
  * pid_namespace: the code runs as pid 2 of a new PID namespace whose pid 1 is the sandbox's
    init. When the code's main process ends, or at the deadline, init exits and the kernel SIGKILLs
    every process left in the namespace (double forks and setsid included) before init counts as
    exited; execute() waits for that. The code sees only its own processes (private /proc) and
    can signal no process outside, so no run can see, signal or outlive into another run.
  * mount_namespace, readonly_root: every mount the code inherits is read-only; /tmp and /dev/shm
    are fresh tmpfs (size limited to the memory limit, charged to its cgroup) that vanish with the
    namespace. The working directory ($HOME, $TMPDIR) is a folder in that /tmp. Nothing the code
    writes reaches the host's filesystems.
  * run_uid, no_new_privs: the code runs as a uid of its own (RUN_UID_BASE + the keeper's pid,
    unique among live runs), keeping only CAP_DAC_READ_SEARCH (the interpreter may live under a
    private /root), and cannot regain privileges through setuid binaries.
  * rlimit_nproc: with its own uid, RLIMIT_NPROC counts this run's tree alone: the code can have
    at most 1 + max_processes processes and threads, in every run (a fork bomb stops there).
  * memory_cgroup (memory_limit_mb + 64 MB of room for the sandbox's own init, no swap) and
    cpu_cgroup (one core): limits on the whole tree, a child of the caller's own cgroup of each
    controller (cgroup v1, or v2 where the controller is delegated to it). An OOM kill sets
    `memory_exceeded`. Per process, in addition: RLIMIT_AS (a big allocation raises MemoryError),
    RLIMIT_CPU, RLIMIT_FSIZE (16 MB files), RLIMIT_CORE = 0.
  * network_namespace, ipc_namespace: only a downed loopback; no shared SysV/POSIX IPC.
  * Python-level guards (os.system/kill/fork/exec*/remove/rename..., subprocess, shutil.rmtree,
    socket, exit/quit, `import ctypes`) raise inside the code. They are monkeypatches that code can
    undo (`del sys.modules["ctypes"]` and re-import it): they turn honest mistakes into clean errors,
    the kernel walls above are what contains determined code.
  * output: stdout and stderr are each capped at `max_output_bytes` (the rest is read and dropped).

Measured on this project's CI kind of machine (root in a VM, Linux 6.18, cgroup v1 memory and cpu),
each of these escapes from the earlier sandbox is now closed, with a test in tests/test_execution.py:
the workdir renamed away and a FIFO left at its path (the parent's clean-up hung forever: now
nothing on the host to clean, 0.1 s); double-fork + setsid survivors (lived on, 4 more per run:
now none after the call); a survivor SIGKILLing later runs (2 of 3 later runs killed: now 0);
pipes held open by a survivor (execute(timeout=1) took 6.4 s: now 0.5 s); four 120 MB children
under memory_limit_mb=200 (all ran: now 2 of 4 OOM-killed); /dev/shm files and flocks outliving the call.

What it does NOT contain:
  * reading: the code can read every file root can (CAP_DAC_READ_SEARCH), secrets included, for
    the length of the call (read-only: it can also flock such a file until the call ends). The
    environment is scrubbed, files are not hidden. Use a VM for code that must not read the host.
  * forged results: the status is written by the code's own process, after the code ran, in the
    same interpreter as any checks it contains. Code can write a fake "success" (os.write to the
    status pipe, then os._exit), replace `assert`-bearing functions, patch builtins, or make the
    checks of a HumanEval program pass without solving the task (for example by defining the
    tested function to return objects whose `==` is always True). `success` means "the process
    reported that the program, tests included, ran to its end without an exception"; a HumanEval
    score is therefore the pass rate of a model that is not trying to game its tests, not proof.
  * CPU and disk below the limits: one core for `timeout` seconds; tmpfs up to the memory limit.
  * the kernel itself: a kernel bug reachable from an unprivileged process defeats every wall.

Where a wall cannot be built (another OS; not root: then only the network is unshared, through a
user namespace; a container without CAP_SYS_ADMIN; cgroup v2 without delegation), execute() raises
SandboxUnavailable naming the missing walls of REQUIRED_WALLS and why, and runs nothing. Running
without them is the caller's explicit choice: allow_weaker=True (or NANOCHAT_SANDBOX_ALLOW_WEAKER=1);
the result then lists them in `missing`. Without a PID namespace, processes that leave the process
group survive the call and the escapes above are open again.

A cost of the guards: libraries that write os.environ while importing (numpy does) fail to import,
since os.putenv is disabled. Tests: tests/test_execution.py.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from nanochat.execution_child import REQUIRED_WALLS

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "execution_child.py")
ALLOW_WEAKER_ENV = "NANOCHAT_SANDBOX_ALLOW_WEAKER"  # "1": run even where some walls cannot be built
GRACE = 2.0  # seconds past `timeout` for the sandbox's own start and teardown: execute() never takes longer
DRAIN = 0.1  # after the sandbox is gone, how long to read output still in the pipes (weaker mode only)


class SandboxUnavailable(RuntimeError):
    """The walls listed in the message cannot be built here, and the caller did not allow running without them."""


@dataclass
class ExecutionResult:
    success: bool            # the code ran to its end without an exception (forgeable: see the module docstring)
    stdout: str              # captured, at most max_output_bytes (UTF-8, undecodable bytes replaced)
    stderr: str
    error: str | None = None  # why it failed, in one line (None on success)
    timeout: bool = False     # killed at the wall-clock deadline
    memory_exceeded: bool = False  # a MemoryError under the address-space limit, or the tree's cgroup OOM-killed
    output_truncated: bool = False  # stdout or stderr was longer than max_output_bytes
    isolation: list[str] = field(default_factory=list)  # the kernel-level walls that were in place
    missing: list[str] = field(default_factory=list)    # required walls that were not (allow_weaker runs only)


def execute(code, timeout=10.0, memory_limit_mb=256, max_output_bytes=64 * 1024, max_processes=16,
            allow_weaker=None):
    """Run `code` (a Python source string) in a fresh sandbox and return within timeout + GRACE
    seconds; never raises for anything the code does. timeout: wall-clock seconds. memory_limit_mb:
    address-space limit per process and memory limit of the whole tree. max_output_bytes: cap on each
    of stdout and stderr. max_processes: processes/threads the code may add (a fork bomb stops there).
    allow_weaker: run even if some walls of REQUIRED_WALLS cannot be built here (they are listed in
    result.missing); default: the NANOCHAT_SANDBOX_ALLOW_WEAKER=1 environment variable, else
    SandboxUnavailable is raised naming the missing walls."""
    assert isinstance(code, str), f"code must be a str, got {type(code).__name__}"
    assert timeout > 0 and memory_limit_mb > 0 and max_output_bytes >= 0 and max_processes >= 0
    if allow_weaker is None:
        allow_weaker = os.environ.get(ALLOW_WEAKER_ENV) == "1"
    env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
        # numerical libraries start one thread per core on import; each counts against RLIMIT_NPROC
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    # the keeper ends the code at `timeout`; past this deadline the keeper itself is killed, the
    # other half of GRACE bounds that kill and the wait for init
    deadline = time.monotonic() + timeout + GRACE / 2
    report_r, report_w = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-I", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", env=env, pass_fds=(report_w,),
                                start_new_session=True, close_fds=True)
    except OSError as e:
        os.close(report_r)
        os.close(report_w)
        return ExecutionResult(False, "", "", error=f"could not start the sandbox interpreter: {e}")
    os.close(report_w)  # the keeper holds the only write end: EOF when it exits
    config = {
        "code": code, "report_fd": report_w, "timeout": float(timeout), "allow_weaker": bool(allow_weaker),
        "memory_bytes": int(memory_limit_mb * 1024 * 1024), "cpu_seconds": int(timeout) + 2,
        "max_processes": int(max_processes), "required": list(REQUIRED_WALLS),
    }
    try:
        proc.stdin.write(json.dumps(config).encode())  # the keeper reads all of it before anything else
        proc.stdin.close()
    except OSError:
        pass  # the keeper died before reading its input; its missing report tells the story

    out, err, report = _Capture(max_output_bytes), _Capture(max_output_bytes), _Capture(1 << 20)
    pidfd = _pump({proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_r: report}, report, deadline)
    killed = not report.eof  # the keeper overran: end it (init follows it by PDEATHSIG) and its group
    if killed and _unreaped(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # unreaped, so the group id cannot have been reused
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=GRACE / 4)
    except subprocess.TimeoutExpired:
        pass
    if pidfd is not None:
        # readable once init has exited, which is after every process of its PID namespace
        select.select([pidfd], [], [], GRACE / 4)
        os.close(pidfd)
    for stream in (proc.stdout, proc.stderr):
        stream.close()
    os.close(report_r)

    lines = [json.loads(line) for line in report.text().splitlines() if line.strip()]
    final = lines[-1] if lines and "walls" in lines[-1] else None
    truncated = out.truncated or err.truncated
    stdout, stderr = out.text(), err.text()
    if final is None:
        why = "overran its deadline" if killed else f"crashed (exit status {proc.returncode})"
        return ExecutionResult(False, stdout, stderr, f"the sandbox {why}", killed, False, truncated)
    if not final["ran"]:
        missing = ", ".join(f"{w} ({final['reasons'].get(w, 'not built')})" for w in final["missing"])
        raise SandboxUnavailable(f"the sandbox cannot build these walls here: {missing}. To run code without "
                                 f"them, pass allow_weaker=True or set {ALLOW_WEAKER_ENV}=1.")
    walls, missing = final["walls"], final["missing"]
    try:
        status = json.loads(final["status"]) if final["status"] else None
    except ValueError:
        status = None  # garbage written to the status pipe by the code itself
    status = status if isinstance(status, dict) else None
    returncode = final["returncode"]
    memory = bool(final["oom"] or (status and status.get("memory")))
    if final["timeout"] or killed:
        return ExecutionResult(False, stdout, stderr, f"timed out after {timeout:g} s", True, memory, truncated,
                               walls, missing)
    if status is None:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        if final["oom"]:
            how += ", out of memory"
        return ExecutionResult(False, stdout, stderr, f"the sandbox process ended without a result ({how})",
                               False, memory, truncated, walls, missing)
    ok = bool(status.get("ok")) and returncode == 0
    error = None if ok else str(status.get("error") or f"exit code {returncode}")
    return ExecutionResult(ok, stdout, stderr, error, False, memory, truncated, walls, missing)


def _pump(captures, report, deadline):
    """Read every pipe until all are at EOF, the deadline passes, or (weaker mode: a process that
    escaped may hold stdout open) DRAIN seconds after the keeper is gone. Returns a pidfd of init."""
    poller, pidfd = select.poll(), None
    for fd in captures:
        poller.register(fd, select.POLLIN)
    drain_until = None
    while captures:
        now = time.monotonic()
        if report.eof and drain_until is None:
            drain_until = now + DRAIN
        until = min(deadline, drain_until or deadline)
        if now >= until:
            break
        for fd, _ in poller.poll(max(1, int((until - now) * 1000))):
            chunk = os.read(fd, 65536)
            captures[fd].add(chunk)
            if not chunk:
                poller.unregister(fd)
                del captures[fd]
        if pidfd is None and hasattr(os, "pidfd_open") and b"\n" in report.data():
            first = json.loads(report.data().split(b"\n", 1)[0])
            try:
                pidfd = os.pidfd_open(first["init"])  # alive: only the keeper, still running, reaps it
            except OSError:
                pidfd = -1
    return pidfd if pidfd != -1 else None


def _unreaped(proc):
    """True while the keeper's pid is still ours (running, or a zombie nobody has reaped)."""
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return True
    except ChildProcessError:
        return False


class _Capture:
    """The first `cap` bytes of a pipe (the rest is read and dropped, so the writer never blocks)."""

    def __init__(self, cap):
        self.cap, self.chunks, self.kept, self.truncated, self.eof = cap, [], 0, False, False

    def add(self, chunk):
        if not chunk:
            self.eof = True
        room = self.cap - self.kept
        if len(chunk) > room:
            self.truncated, chunk = True, chunk[:max(room, 0)]
        if chunk:
            self.chunks.append(chunk)
            self.kept += len(chunk)

    def data(self):
        return b"".join(self.chunks)

    def text(self):
        return self.data().decode("utf-8", errors="replace")
