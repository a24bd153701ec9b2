"""
The inside of the sandbox of nanochat/execution.py: the process tree that `execute()` starts. Not a
library module and not a command-line tool: `execute()` runs this file with `python -I` (so it may
import only the standard library) and talks to it over pipes. Three processes, outermost first:

  keeper  root, in the caller's namespaces. Reads the config on stdin, makes this run's cgroups,
          unshares new PID, mount, network and IPC namespaces, forks init, lets the code start only
          once every required wall is up (or the caller allowed fewer), kills init at the deadline,
          and reports to the caller on its own pipe once init is gone. Nothing in the sandbox can
          see or signal it (it lives outside the PID namespace).
  init    pid 1 of the new PID namespace, root. Joins the cgroups, mounts a private /proc, a
          read-only view of every other mount and fresh tmpfs on /tmp and /dev/shm, forks the
          worker, reaps orphans, and exits when the worker does. The kernel then SIGKILLs every
          process left in the namespace and waits for all of them before init counts as exited.
  worker  pid 2, a uid of its own (RUN_UID_BASE + the keeper's pid, unique among live runs). Drops
          to that uid, sets the rlimits, installs the Python-level guards, runs the code and writes
          its status (which the code can forge: see execution.py).

What each wall means and what is not contained is in the docstring of nanochat/execution.py.
"""

import builtins
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

try:
    import resource  # now: after the walls the interpreter's files may be unreadable (user namespace)
except ImportError:  # not a Unix
    resource = None

# Walls without which execute() refuses to run code unless the caller passes allow_weaker=True
# (execute() sends this list in the config, so that a test can ask for one that does not exist).
REQUIRED_WALLS = ("pid_namespace", "mount_namespace", "readonly_root", "network_namespace", "run_uid",
                  "no_new_privs", "rlimit_nproc", "memory_cgroup")
RUN_UID_BASE = 0x70000000       # + keeper pid (< 2**22): a uid no account and no other live run has
MAX_FILE_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: the largest file the worker may write
INIT_ROOM = 64 * 1024 * 1024    # memory cgroup room for init and the worker's own interpreter
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 1, 8, 38


def keeper_main():
    config = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the code's input() sees EOF instead of blocking
    os.close(null)
    report_fd, linux = config["report_fd"], sys.platform.startswith("linux")
    walls, reasons = [], {}
    libc = None
    if linux:
        import ctypes  # before any wall goes up
        libc = ctypes.CDLL(None, use_errno=True)
    root = os.getuid() == 0
    cgroups = _make_cgroups(f"nanochat-sandbox-{os.getpid()}", config["memory_bytes"] + INIT_ROOM, reasons)
    namespaces = False
    if linux and root:
        # the new PID namespace is for our children; the mount namespace is init's alone (made there),
        # so that the keeper keeps the caller's view of /sys/fs/cgroup and /tmp
        namespaces = libc.unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC) == 0
        if namespaces:
            walls += ["pid_namespace", "network_namespace", "ipc_namespace"]
        else:
            reasons["pid_namespace"] = f"unshare failed: {os.strerror(ctypes.get_errno())}"
    elif linux:
        reasons["pid_namespace"] = "not root (only the network is unshared, through a user namespace)"
        if _unshare_network_unprivileged(libc):
            walls.append("network_namespace")
    else:
        reasons["pid_namespace"] = f"not Linux ({sys.platform})"
    host_dir = None
    if not namespaces:
        host_dir = tempfile.mkdtemp(prefix="nanochat-sandbox-")
        os.chmod(host_dir, 0o711)  # the worker may pass through, not write
    walls_r, walls_w = os.pipe()
    go_r, go_w = os.pipe()
    status_r, status_w = os.pipe()
    keeper = os.getpid()
    init = os.fork()
    if init == 0:
        code = 70
        try:
            for fd in (walls_r, go_w, status_r, report_fd):
                os.close(fd)
            code = _init_main(config, libc, keeper, namespaces, host_dir, cgroups, walls_w, go_r, status_w)
        except BaseException:  # noqa: BLE001 - a broken setup must show up in stderr, not vanish
            traceback.print_exc()
        finally:
            os._exit(code)
    for fd in (walls_w, go_r, status_w):
        os.close(fd)
    _write(report_fd, {"init": init})

    for line in _read_all(walls_r, time.monotonic() + 30.0).splitlines():
        part = json.loads(line)  # written by init and the worker before any code runs
        walls += part["walls"]
        reasons.update(part["reasons"])
    missing = [w for w in config["required"] if w not in walls]
    go = not missing or config["allow_weaker"]
    if go:
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass  # the worker is already gone; its exit status tells the story
    os.close(go_w)  # without the byte the worker exits without running the code
    timed_out, status = _wait_init(init, time.monotonic() + config["timeout"], namespaces)
    raw = _read_all(status_r, time.monotonic() + 0.2)  # EOF at once: every holder is dead (PID ns)
    oom = any(_oom_kills(d) for _, d in cgroups)
    for _, d in cgroups:
        _remove_cgroup(d)
    if host_dir is not None:
        shutil.rmtree(host_dir, ignore_errors=True)
    _write(report_fd, {"walls": walls, "missing": missing, "reasons": reasons, "ran": go,
                       "timeout": timed_out, "returncode": _returncode(status), "oom": oom, "status": raw})
    os._exit(0)


def _init_main(config, libc, keeper, namespaces, host_dir, cgroups, walls_w, go_r, status_w):
    """pid 1 of the sandbox (or, without namespaces, the leader of its process group). Returns the
    exit code that carries the worker's: its own code, or 128 + the signal that killed it."""
    os.setpgid(0, 0)  # the keeper kills this group at the deadline
    walls, reasons = [], {}
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # if the keeper dies, so do we
        if os.getppid() != (0 if namespaces else keeper):  # 0: the keeper is outside our PID namespace
            return 70  # it died before the line above
    for wall, directory in cgroups:  # join before / goes read-only
        try:
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write("0")
            walls.append(wall)
        except OSError as e:
            reasons[wall] = f"could not join {directory}: {e}"
    run_uid = RUN_UID_BASE + keeper
    if namespaces:
        _private_mounts(libc, config["memory_bytes"], walls, reasons)
    else:
        reasons["mount_namespace"] = reasons["readonly_root"] = "no mount namespace (see pid_namespace)"
    # Namespaced: in the private /tmp, gone with it. Otherwise inside the keeper's root-owned folder,
    # so the code can neither rename its workdir away nor replace it (e.g. by a FIFO).
    workdir = tempfile.mkdtemp(prefix="nanochat-sandbox-", dir="/tmp" if namespaces else host_dir)
    os.write(walls_w, (json.dumps({"walls": walls, "reasons": reasons}) + "\n").encode())
    worker = os.fork()
    if worker == 0:
        try:
            _worker_main(config, libc, run_uid, workdir, walls_w, go_r, status_w)
        except BaseException:  # noqa: BLE001 - as for init
            traceback.print_exc()
        finally:
            os._exit(70)
    for fd in (walls_w, go_r, status_w):
        os.close(fd)
    while True:  # reap whatever ends (orphans of the code land here too) until the worker does
        pid, status = os.wait()
        if pid == worker:
            break
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _worker_main(config, libc, run_uid, workdir, walls_w, go_r, status_w):
    walls, reasons = [], {}
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    cpu = config["cpu_seconds"]
    for name, limit in (("RLIMIT_CPU", (cpu, cpu + 1)), ("RLIMIT_FSIZE", (MAX_FILE_BYTES, MAX_FILE_BYTES)),
                        ("RLIMIT_CORE", (0, 0))):
        resource.setrlimit(getattr(resource, name), limit)
        walls.append(name.lower())
    if os.getuid() == 0:
        why = _drop_root(libc, run_uid, workdir)
        walls.append("run_uid") if why is None else reasons.update(run_uid=why)
    else:
        reasons["run_uid"] = "not root: the code runs as the calling user"
    if libc is not None and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        walls.append("no_new_privs")
    # RLIMIT_NPROC counts every task (process or thread) of the real uid. With a uid of its own the
    # count is this run's tree alone; without, it is relative to what the user already runs.
    own_uid = "run_uid" in walls
    nproc = 1 + config["max_processes"] + (0 if own_uid else _count_tasks(os.getuid()))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if own_uid:
        walls.append("rlimit_nproc")
    else:
        reasons["rlimit_nproc"] = "relative to the user's other processes (no uid of its own)"
    _install_guards()
    memory = config["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # last: the setup must not be cut short
    walls.append("rlimit_as")
    os.write(walls_w, (json.dumps({"walls": walls, "reasons": reasons}) + "\n").encode())
    os.close(walls_w)
    go = os.read(go_r, 1)
    os.close(go_r)
    if not go:
        os._exit(0)

    status = {"ok": False, "error": None, "memory": False}
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
        os.write(status_w, json.dumps(status).encode())
    except (OSError, TypeError, ValueError):
        pass
    os._exit(0)  # skip interpreter teardown (atexit handlers the code may have registered)


# -----------------------------------------------------------------------------
# keeper helpers

def _wait_init(init, deadline, namespaces):
    """Wait for init to exit, killing its group at the deadline. Returns (timed_out, wait status).
    In a PID namespace init's exit means every process of the code has exited too."""
    timed_out, delay = False, 0.0005
    while os.waitid(os.P_PID, init, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if not timed_out and time.monotonic() >= deadline:
            timed_out = True
            os.killpg(init, signal.SIGKILL)
        time.sleep(delay)
        delay = min(delay * 2, 0.01)
    if not namespaces:  # init is an unreaped zombie: its group id cannot be reused yet
        for _ in range(20):  # the group may be mid-fork: signal until no member is left
            try:
                os.killpg(init, signal.SIGKILL)
            except OSError:
                break
            time.sleep(0.01)
    return timed_out, os.waitpid(init, 0)[1]


def _returncode(status):
    """The worker's exit code (negative: killed by that signal), from init's wait status."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)  # init itself was killed: the deadline, or the OOM killer
    code = os.WEXITSTATUS(status)
    return -(code - 128) if code > 128 else code


def _read_all(fd, deadline, cap=64 * 1024):
    """Read fd until EOF or the deadline (keeping the first `cap` bytes), then close it."""
    chunks, kept = [], 0
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk[:max(cap - kept, 0)])
        kept += len(chunks[-1])
    os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _write(fd, message):
    os.write(fd, (json.dumps(message) + "\n").encode())


def _make_cgroups(name, memory_bytes, reasons):
    """A memory and a cpu cgroup for this run, each a child of the caller's own cgroup of that
    controller (v1, or v2 where the controller is delegated). Returns [(wall, directory)]."""
    try:
        with open("/proc/self/cgroup") as f:
            own = {}
            for line in f:
                hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(",") if controllers else ["" if hierarchy == "0" else "?"]:
                    own[c] = path
        with open("/proc/self/mountinfo") as f:
            mounts = [(line.split()[4], line.split(" - ")[1].split()) for line in f]
    except OSError as e:
        reasons["memory_cgroup"] = reasons["cpu_cgroup"] = f"no cgroups here: {e}"
        return []
    v1 = {c: point for point, (fstype, _, options) in mounts if fstype == "cgroup"
          for c in options.split(",")}
    v2 = next((point for point, (fstype, _, _) in mounts if fstype == "cgroup2"), None)
    settings = {
        "memory": ({"memory.limit_in_bytes": memory_bytes, "memory.memsw.limit_in_bytes": memory_bytes},
                   {"memory.max": memory_bytes, "memory.swap.max": 0}),
        "cpu": ({"cpu.cfs_period_us": 100000, "cpu.cfs_quota_us": 100000},  # one core for the tree
                {"cpu.max": "100000 100000"}),
    }
    made = []
    for controller, (files_v1, files_v2) in settings.items():
        wall = f"{controller}_cgroup"
        if controller in v1 and controller in own:
            base, files = v1[controller] + own[controller], files_v1
        elif v2 is not None and "" in own and controller in _read(v2 + own[""] + "/cgroup.subtree_control"):
            base, files = v2 + own[""], files_v2
        else:
            reasons[wall] = f"no {controller} controller that this process may use (v1, or delegated v2)"
            continue
        directory = os.path.join(base, name)
        try:
            os.mkdir(directory, 0o700)
            for i, (file, value) in enumerate(files.items()):
                if i == 0 or os.path.exists(os.path.join(directory, file)):  # the rest are optional
                    with open(os.path.join(directory, file), "w") as f:
                        f.write(str(value))
            made.append((wall, directory))
        except OSError as e:
            reasons[wall] = f"could not set up {directory}: {e}"
            _remove_cgroup(directory)
    return made


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _oom_kills(directory):
    """How many processes the OOM killer ended in this cgroup (v1 memory.oom_control, v2 memory.events)."""
    for file in ("memory.oom_control", "memory.events"):
        for line in _read(os.path.join(directory, file)).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def _remove_cgroup(directory):
    for _ in range(50):  # tasks that just exited may still be accounted for a moment
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _unshare_network_unprivileged(libc):
    """Not root: a new user namespace holding a new, empty network namespace."""
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


# -----------------------------------------------------------------------------
# init and worker helpers

def _private_mounts(libc, size_bytes, walls, reasons):
    """A new mount namespace for init and the worker: nothing propagates back, every inherited mount turns
    read-only, and /proc (this PID namespace only), /tmp and /dev/shm are fresh and private."""
    import ctypes
    if libc.unshare(CLONE_NEWNS) != 0:
        reasons["mount_namespace"] = f"unshare failed: {os.strerror(ctypes.get_errno())}"
        return
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        reasons["mount_namespace"] = f"making / private failed: {os.strerror(ctypes.get_errno())}"
        return
    # mount_setattr(2) (Linux >= 5.12, syscall 442 on every architecture): MOUNT_ATTR_RDONLY, AT_RECURSIVE
    attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)
    if libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), b"/", ctypes.c_uint(0x8000), ctypes.byref(attr),
                    ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
        walls.append("readonly_root")
    else:
        reasons["readonly_root"] = f"mount_setattr failed: {os.strerror(ctypes.get_errno())}"
    tmpfs = f"size={size_bytes},mode=1777".encode()
    for source, target, fstype, flags, options in (
            (b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
            (b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs),
            (b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, tmpfs)):
        if libc.mount(source, target, fstype, flags, options) != 0:
            reasons["mount_namespace"] = f"mounting {target.decode()} failed: {os.strerror(ctypes.get_errno())}"
            return
    walls.append("mount_namespace")


def _drop_root(libc, uid, workdir):
    """root -> `uid`, keeping only CAP_DAC_READ_SEARCH (read and traverse anything, write nothing
    of root's: the interpreter may live under a private /root). Returns None, or why it failed."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    CAP_DAC_READ_SEARCH, LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522
    header, data = Header(LINUX_CAPABILITY_VERSION_3, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0 or not data[0].permitted & (1 << CAP_DAC_READ_SEARCH):
        return "root without CAP_DAC_READ_SEARCH: the dropped uid could not import the standard library"
    try:
        os.chown(workdir, uid, uid)
        os.setgroups([])
        if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
            return "prctl(PR_SET_KEEPCAPS) failed"
        os.setgid(uid)
        os.setuid(uid)
    except OSError as e:
        return f"could not become uid {uid}: {e}"
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    data[0].inheritable = data[1].effective = data[1].permitted = data[1].inheritable = 0
    libc.capset(ctypes.byref(header), data)  # on failure we hold no capability at all: still walled in
    return None


def _count_tasks(uid):
    """Processes + threads currently owned by `uid` (what RLIMIT_NPROC counts)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
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
    keeper_main()
