"""
A sandbox for running model-written Python (HumanEval completions, tool calls): `execute(code)`.

    from nanochat.execution import execute
    result = execute("print(1 + 1)", timeout=5.0, memory_limit_mb=256)
    result.success, result.stdout  # True, "2\\n"

The parent never runs the code itself. Each call spawns a fresh interpreter (`sys.executable -I`,
not a fork of the caller, so none of the caller's state, modules or open files leak in) that runs
this very file as its entry point (`_child_main`), receives the code on stdin and reports a small
JSON status on a private pipe. Whatever the child does (crash, hang, exhaust memory, exit early),
the caller gets an `ExecutionResult` back.

What is protected, outermost first:
  * wall clock: the child runs in its own process group (new session); at the deadline, and after
    every run, the whole group gets SIGKILL. RLIMIT_CPU also kills a busy child by itself.
  * memory: RLIMIT_AS caps the child's address space; a big allocation raises MemoryError
    (reported as `memory_exceeded`). Output files: RLIMIT_FSIZE; core dumps: RLIMIT_CORE = 0.
  * processes: RLIMIT_NPROC (the user's current count + `max_processes`) bounds a fork bomb.
  * network (Linux): the child enters a fresh network namespace (only a downed loopback), as root
    directly or, unprivileged, inside a new user namespace. Always, in addition, socket creation
    is replaced by a function that raises.
  * privileges (Linux, when started as root): the child drops to the `nobody` user and keeps only
    CAP_DAC_READ_SEARCH (so it can still read the interpreter and the standard library under a
    private /root), with PR_SET_NO_NEW_PRIVS (no regaining privileges through setuid binaries).
    It can then write only where `nobody` may: its private working directory and world-writable
    folders; it cannot signal, delete or overwrite the caller's files or processes. RLIMIT_NPROC
    is not enforced for root, so this drop is also what makes the process limit real as root.
  * files: the working directory is a fresh temporary folder (also $HOME and $TMPDIR), removed
    afterwards.
  * destructive functions: os.system/kill/fork/exec*/spawn*/remove/unlink/rmdir/rename/putenv/
    chmod/chown/setuid..., subprocess.*, shutil.rmtree/move/chown, socket.*, the builtins exit/
    quit/help, and `import ctypes` raise PermissionError (or ImportError) inside the child.
  * output: stdout and stderr are each capped at `max_output_bytes` (the rest is read and dropped).

What it does NOT protect against:
  * the Python-level guards are monkeypatches: code that wants to (e.g. `del sys.modules["ctypes"]`
    then reimport it, or dig the originals out of `gc`) can undo every one of them. Only the
    kernel-level limits above (rlimits, namespaces, the uid drop) are real walls, and which of them
    applied depends on the platform and privileges: see `ExecutionResult.isolation`.
  * not started as root: the child runs as the calling user, so determined code can do to that
    user's files (and processes outside its group) whatever the user can. Root without
    CAP_DAC_READ_SEARCH (e.g. a default Docker container) gets no uid drop either.
  * without a network namespace (no root and no unprivileged user namespaces, or root without
    CAP_SYS_ADMIN), determined code can reach the network.
  * reading: the child can read every file the caller can (secrets included, e.g. the environment
    is scrubbed but files are not hidden). Use a container or VM for untrusted, adversarial code.
  * a process that escapes the process group (setsid through ctypes) survives the group kill; it
    stays bound by the rlimits (CPU time, memory, process count), not by the wall clock.
  * forged results: the status pipe lives in the child, so code can write a fake "success" to it.
    Treat `success` as "the code ran to its end without an exception", not as proof.
  * resource exhaustion below the limits: disk (up to RLIMIT_FSIZE per file in writable folders),
    CPU (up to the timeout), and the shared `nobody` process count between concurrent sandboxes.

A cost of the guards: libraries that write os.environ while importing (numpy does) fail to import,
since os.putenv is disabled. Tests: tests/test_execution.py. Running this file directly is the
child's entry point; it is not a command-line tool.
"""

import builtins
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field

NOBODY_UID = NOBODY_GID = 65534
MAX_FILE_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: the largest file the child may write


@dataclass
class ExecutionResult:
    success: bool            # the code ran to its end without an exception (see the module docstring)
    stdout: str              # captured, at most max_output_bytes (UTF-8, undecodable bytes replaced)
    stderr: str
    error: str | None = None  # why it failed, in one line (None on success)
    timeout: bool = False     # killed at the wall-clock deadline
    memory_exceeded: bool = False  # a MemoryError under the address-space limit
    output_truncated: bool = False  # stdout or stderr was longer than max_output_bytes
    isolation: list[str] = field(default_factory=list)  # the kernel-level walls that were in place


def execute(code, timeout=10.0, memory_limit_mb=256, max_output_bytes=64 * 1024, max_processes=16):
    """Run `code` (a Python source string) in a fresh sandboxed interpreter; never raises for
    anything the code does. timeout: wall-clock seconds. memory_limit_mb: address-space limit.
    max_output_bytes: cap on each of stdout and stderr. max_processes: extra processes/threads the
    child may create (a fork bomb stops there)."""
    assert isinstance(code, str), f"code must be a str, got {type(code).__name__}"
    assert timeout > 0 and memory_limit_mb > 0 and max_output_bytes >= 0 and max_processes >= 0
    workdir = tempfile.mkdtemp(prefix="nanochat-sandbox-")
    env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
        # numerical libraries start one thread per core on import; each counts against RLIMIT_NPROC
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    }
    status_r, status_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=env, pass_fds=(status_w,), start_new_session=True, close_fds=True,
        )
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        shutil.rmtree(workdir, ignore_errors=True)
        return ExecutionResult(False, "", "", error=f"could not start the sandbox interpreter: {e}")
    os.close(status_w)  # the child holds the only write end now: EOF when it (and its children) exit

    readers = [_Reader(proc.stdout, max_output_bytes), _Reader(proc.stderr, max_output_bytes),
               _Reader(os.fdopen(status_r, "rb"), 64 * 1024)]
    config = {
        "code": code, "status_fd": status_w, "memory_bytes": int(memory_limit_mb * 1024 * 1024),
        "cpu_seconds": int(math.ceil(timeout)) + 1, "max_processes": int(max_processes),
    }
    try:
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    except OSError:
        pass  # the child died before reading its input; its exit status tells the story

    timed_out = not _wait_unreaped(proc, timeout)
    # Kill the group while the leader is still an unreaped zombie: its pid (the group id) cannot be
    # reused yet, so this signal cannot hit an unrelated process. It also ends leftover children.
    _kill_group(proc.pid)
    returncode = proc.wait()
    # Killed members die asynchronously: wait (bounded) until none is left running, signalling again
    # in case one was mid-fork. Zombies are fine: they wait for init to reap them and run nothing.
    deadline = time.monotonic() + 2.0
    while _running_members(proc.pid) and time.monotonic() < deadline:
        _kill_group(proc.pid)
        time.sleep(0.005)
    for reader in readers:
        reader.join(timeout=2.0)  # an escaped grandchild may hold a pipe open: do not wait for it
    shutil.rmtree(workdir, ignore_errors=True)

    stdout, stderr, status_raw = (r.text() for r in readers)
    truncated = readers[0].truncated or readers[1].truncated
    try:
        status = json.loads(status_raw) if status_raw else None
    except ValueError:
        status = None  # garbage written to the status pipe by the code itself
    status = status if isinstance(status, dict) else None
    isolation = list(status.get("isolation", [])) if status else []

    if timed_out:
        return ExecutionResult(False, stdout, stderr, f"timed out after {timeout:g} s", True, False, truncated,
                               isolation)
    if status is None:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        return ExecutionResult(False, stdout, stderr, f"the sandbox process ended without a result ({how})",
                               False, False, truncated, isolation)
    ok = bool(status.get("ok")) and returncode == 0
    error = None if ok else str(status.get("error") or f"exit code {returncode}")
    return ExecutionResult(ok, stdout, stderr, error, False, bool(status.get("memory")), truncated, isolation)


def _wait_unreaped(proc, timeout):
    """Wait until the child exits (leaving it unreaped) or the timeout passes. True if it exited."""
    deadline = time.monotonic() + timeout
    if not hasattr(os, "waitid"):  # macOS before Python 3.13: fall back to reaping (tiny pid-reuse risk)
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    delay = 0.0005
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _kill_group(pgid):
    """SIGKILL every process of the group; False once the group has no member left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies of another user remain, or the group id was reused
        return False


def _running_members(pgid):
    """pids of the group's processes that are not zombies (Linux /proc; elsewhere: none known)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    members = []
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            # "pid (comm) state ppid pgrp ...": comm may hold spaces or parentheses: split after the last ")"
            state, _, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                members.append(int(pid))
        except (OSError, ValueError):
            continue
    return members


class _Reader(threading.Thread):
    """Drains a pipe in the background, keeping the first `cap` bytes (so the child never blocks)."""

    def __init__(self, stream, cap):
        super().__init__(daemon=True)
        self.stream, self.cap, self.chunks, self.kept, self.truncated = stream, cap, [], 0, False
        self.lock = threading.Lock()
        self.start()

    def run(self):
        read = getattr(self.stream, "read1", self.stream.read)  # read1: return what is there, do not fill
        try:
            while chunk := read(65536):
                with self.lock:
                    room = self.cap - self.kept
                    if len(chunk) > room:
                        self.truncated = True
                        chunk = chunk[:max(room, 0)]
                    if chunk:
                        self.chunks.append(chunk)
                        self.kept += len(chunk)
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.stream.close()
            except OSError:
                pass

    def text(self):
        with self.lock:
            return b"".join(self.chunks).decode("utf-8", errors="replace")


# -----------------------------------------------------------------------------
# The child: everything below runs inside the sandbox interpreter.

def _child_main():
    # Everything the child's own machinery needs (the imports at the top of this file, resource,
    # ctypes) is imported before the walls go up: afterwards the interpreter's files may no longer
    # be readable (e.g. inside a new user namespace).
    config = json.loads(sys.stdin.buffer.read())
    sys.stdin = open(os.devnull)  # input() sees EOF instead of blocking
    status_fd = config["status_fd"]
    try:
        import resource
    except ImportError:  # not a Unix
        resource = None
    isolation = _apply_kernel_walls(config)
    _install_guards()
    if resource is not None:  # the address-space limit comes last, so that the setup is not cut short
        try:
            resource.setrlimit(resource.RLIMIT_AS, (config["memory_bytes"], config["memory_bytes"]))
            isolation.append("rlimit_as")
        except (ValueError, OSError):
            pass

    status = {"ok": False, "error": None, "memory": False, "isolation": isolation}
    try:
        program = compile(config.pop("code"), "<sandbox>", "exec")
        exec(program, {"__name__": "__main__", "__builtins__": builtins})
        status["ok"] = True
    except MemoryError:
        status["error"], status["memory"] = "MemoryError: the memory limit was exceeded", True
    except SystemExit as e:
        status["error"] = f"the code exited early (SystemExit({e.code!r}))"
    except BaseException as e:  # noqa: BLE001 - anything the code raises is a failed run, not a crash
        traceback.print_exc()
        status["error"] = f"{type(e).__name__}: {e}"[:1000]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or replaced stream must not hide the status
            pass
    try:
        os.write(status_fd, json.dumps(status).encode())
    except (OSError, TypeError, ValueError):
        pass
    os._exit(0)  # skip interpreter teardown (atexit handlers the code may have registered)


def _apply_kernel_walls(config):
    """rlimits, network namespace, uid drop, no_new_privs: whatever this platform allows.
    Returns the names of the walls that are in place."""
    walls = []
    try:
        import resource
    except ImportError:  # not a Unix
        return walls
    cpu = config["cpu_seconds"]
    for name, limit in (("RLIMIT_CPU", (cpu, cpu + 1)), ("RLIMIT_FSIZE", (MAX_FILE_BYTES, MAX_FILE_BYTES)),
                        ("RLIMIT_CORE", (0, 0))):
        try:
            resource.setrlimit(getattr(resource, name), limit)
            walls.append(name.lower())
        except (ValueError, OSError, AttributeError):
            pass
    if sys.platform.startswith("linux"):
        import ctypes  # before the walls, see _child_main
        libc = ctypes.CDLL(None, use_errno=True)
        if _unshare_network(libc):
            walls.append("network_namespace")
        if os.getuid() == 0 and _drop_root(libc):
            walls.append("uid_nobody")
        if libc.prctl(38, 1, 0, 0, 0) == 0:  # PR_SET_NO_NEW_PRIVS
            walls.append("no_new_privs")
    if hasattr(resource, "RLIMIT_NPROC"):
        # The limit counts every task (process or thread) of the real uid, not only ours.
        nproc = _count_tasks(os.getuid()) + config["max_processes"]
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            if os.getuid() != 0:  # the kernel does not enforce RLIMIT_NPROC for root
                walls.append("rlimit_nproc")
        except (ValueError, OSError):
            pass
    return walls


def _unshare_network(libc):
    """Move into a new, empty network namespace (as root, or through a new user namespace)."""
    CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
    if os.getuid() == 0:
        return libc.unshare(CLONE_NEWNET) == 0
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        return False
    try:  # keep our own ids inside the new user namespace (otherwise they show as 65534)
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    except OSError:
        pass
    return True


def _drop_root(libc):
    """root -> nobody, keeping only CAP_DAC_READ_SEARCH (read and traverse anything, write nothing
    of root's). Skipped, returning False, where that capability is not ours to keep."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    CAP_DAC_READ_SEARCH, LINUX_CAPABILITY_VERSION_3, PR_SET_KEEPCAPS = 2, 0x20080522, 8
    header, data = Header(LINUX_CAPABILITY_VERSION_3, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0 or not data[0].permitted & (1 << CAP_DAC_READ_SEARCH):
        return False  # without it `nobody` could not even import the standard library from /root
    try:
        os.chown(".", NOBODY_UID, NOBODY_GID)  # the private working directory becomes writable
        os.setgroups([])
        if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            return False
        os.setgid(NOBODY_GID)
        os.setuid(NOBODY_UID)
    except OSError:
        return False
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    data[0].inheritable = data[1].effective = data[1].permitted = data[1].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        # we are nobody with no capabilities: imports of not-yet-loaded modules may fail, but we are
        # still walled in; report the drop as done
        pass
    return True


def _count_tasks(uid):
    """Processes + threads currently owned by `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for pid in entries:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1"))
        except (OSError, KeyError, ValueError):
            continue
    return total


def _install_guards():
    """Replace destructive and escaping functions with ones that raise (Python-level only)."""
    import _socket
    import posix

    def disabled(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        refuse.__name__ = name
        return refuse

    os_names = ("system", "kill", "killpg", "fork", "forkpty", "popen", "putenv", "unsetenv", "remove",
                "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "chmod",
                "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir", "link",
                "symlink", "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid",
                "setregid", "setresgid", "setsid", "setpgid", "setpgrp", "nice", "posix_spawn",
                "posix_spawnp", "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp",
                "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                "spawnvpe", "register_at_fork")
    for module in (os, posix):
        for name in os_names:
            if hasattr(module, name):
                setattr(module, name, disabled(f"os.{name}"))
    for name in ("Popen", "call", "run", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, name, disabled(f"subprocess.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, disabled(f"shutil.{name}"))
    for module in (socket, _socket):
        for name in ("socket", "SocketType", "create_connection", "create_server", "socketpair", "fromfd",
                     "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
            if hasattr(module, name):
                setattr(module, name, disabled(f"socket.{name}"))
    for name in ("exit", "quit", "help", "copyright", "credits", "license"):
        setattr(builtins, name, disabled(name))
    # `import ctypes` would reach any libc function directly; a None entry makes the import fail
    for name in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "resource", "pty"):
        sys.modules[name] = None


if __name__ == "__main__":
    _child_main()
