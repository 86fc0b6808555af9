"""A kernel launcher for untrusted notebooks: each submission runs in its own Linux sandbox.

The grader starts every kernel as `python -m course_lib.instructor.sandbox --limits JSON -f CONNECTION`, where
CONNECTION lies in a fresh folder of its own (the box) and names Unix sockets there (jupyter's `ipc` transport), so
the kernel needs no network. Built from what the Linux kernel gives, with no tool to install (bubblewrap is not on
every machine and cannot come from pip; Python before 3.12 has no `os.unshare`, so the system calls go through
ctypes), the layers are:

- namespaces (`unshare(2)`): its own PID namespace (it sees and can signal only its own processes, and all of them
  die with it), network (only its own loopback is up: nothing in or out, but `torch.distributed` can join the
  submission's own processes, as notebook 07 does), mount, IPC and UTS; a user namespace too when the grader is
  not root;
- a new root (`pivot_root(2)`) on an empty tmpfs holding read-only binds of what Python needs (system folders,
  the Python installation and packages, `course_lib` without its `instructor` package, the model cache), a fresh
  `/proc`, a `/dev` of null, zero, full, random and urandom only, and private, size-capped tmpfs `/tmp`,
  `/dev/shm` and home: nothing of the grader, the gradebook, the solutions or other students exists in it;
- a new session with no controlling terminal, `/dev/null` as stdin, a log file in the box as stdout and stderr,
  and no other inherited file descriptor;
- an unprivileged user: uid 65534 when the grader is root, else an unmapped uid in a nested user namespace, with
  no capabilities and `no_new_privs`;
- Landlock on top where the kernel has it: files (read the binds, write only its tmpfs folders, make sockets in
  the box), TCP bind and connect only on the loopback ports of `LOCAL_PORTS` (ABI 4+), signals and abstract sockets beyond its own domain (ABI 6+);
- CPU-time, address-space, file-size, process-count and core-dump limits (`setrlimit`).

The same sandbox runs a job that is not a kernel (`--run MODULE`: `python -m MODULE FILE`, FILE in the box; the
capstone's adapter evaluation, see `jobs.py`). The wall-clock and output budgets are enforced from outside, by the
grader (`execute.SafeExecute`, `jobs.run_job`).
`layers()` says which of these the machine gives; the grader refuses to start without the namespaces.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import platform
import re
import resource
import signal
import socket
import struct
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from course_lib.core.models import cache_dir

KEPT_ENV = ("PATH", "LANG", "LC_ALL", "COURSE_PROFILE", "COURSE_MODEL_SOURCE", "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")
HOME = Path("/home/student")
NOBODY = 65534  # the uid and gid a root grader's kernels run as
INNER = 1000  # the uid inside the nested user namespace of an ordinary grader's kernels
# TCP ports a submission may use on its own loopback: torch.distributed's default rendezvous (29500) and, as the
# namespace's ephemeral range, the ports gloo binds between the submission's processes
LOCAL_PORTS = (29400, 29599)
EPHEMERAL_PORTS = (29501, 29599)


@dataclass(frozen=True)
class Limits:
    """Resource limits for one submission's kernel."""

    cpu_seconds: int = 300  # CPU time of the whole kernel; SIGKILL past it
    memory_bytes: int = 8 * 2**30  # address space; a memory bomb gets MemoryError or dies here
    file_bytes: int = 256 * 2**20  # largest file the submission may write
    processes: int = 256  # fork bombs stop here (counted per user, so generous)
    tmp_bytes: int = 2 * 2**30  # each private tmpfs (/tmp, home); /dev/shm gets a quarter
    landlock: bool = True  # Landlock on top of the namespaces where the kernel supports it
    notebook_seconds: int = 900  # wall clock of a whole notebook, enforced by the grader from outside
    output_bytes: int = 20_000_000  # output kept of a whole notebook, enforced by the grader

    def to_json(self) -> str:
        """The limits as the JSON the launcher reads."""
        return json.dumps(asdict(self))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

_NEWNS, _NEWUTS, _NEWIPC, _NEWUSER, _NEWPID, _NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "full", "random", "urandom")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")


def _check(result: int, what: str) -> None:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str | Path, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda s: None if s is None else str(s).encode())
    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)), f"mount {target}")


# Landlock (linux/landlock.h): the syscall numbers are the same on every architecture.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR, _MAKE_SOCK, _TRUNCATE, _IOCTL_DEV = 1, 2, 4, 8, 1 << 9, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The Landlock ABI version of the running Linux kernel, 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    version = _libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def restrict_filesystem(readable: list[Path], writable: list[Path], sockets: list[Path] = (),
                        ports: tuple[int, int] | None = None) -> bool:
    """Allow this process and its children to read only `readable`, write only `writable`, make sockets only in
    `sockets`; with ABI 4+ also TCP only on the ports `ports` (an inclusive range; none when None), with ABI 6+ no
    signals or abstract sockets beyond itself. False if the kernel has no Landlock."""
    abi = landlock_abi()
    if abi == 0:
        return False
    handled = _FS_BY_ABI.get(abi, (1 << 16) - 1)
    attr = _RulesetAttr(handled, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    _check(ruleset, "landlock_create_ruleset")
    try:
        rules = [(p, _READ) for p in readable] + [(p, handled) for p in writable]
        rules += [(p, _READ | _MAKE_SOCK) for p in sockets]
        for path, access in rules:
            if not path.exists():
                continue
            allowed = (access & _FILE_RIGHTS if path.is_file() or path.is_char_device() else access) & handled
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed, fd)
                _check(_libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)),
                       f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        if abi >= 4 and ports is not None:
            allowed_ports = [(0, _NET_BIND_TCP)]  # bind to port 0: the kernel picks one from the ephemeral range
            allowed_ports += [(port, _NET_BIND_TCP | _NET_CONNECT_TCP) for port in range(ports[0], ports[1] + 1)]
            for port, access in allowed_ports:
                rule = _NetPort(access, port)
                _check(_libc.syscall(_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0)),
                       f"landlock_add_rule port {port}")
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return True


def readable_paths() -> list[Path]:
    """What a kernel must read: system folders, Python and its packages, course_lib and the model cache."""
    paths = {Path(p) for p in _SYSTEM}
    paths |= {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix)}
    paths |= {Path(p) for p in sys.path if p and Path(p).is_dir() and "-packages" in p}
    paths |= {Path(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(Path(__file__).resolve().parents[1])  # course_lib itself, not the repository around it
    paths.add(cache_dir())
    paths.add(Path(os.path.realpath(sys.executable)).parent)
    return sorted(p for p in paths if os.path.lexists(p))


def hidden_paths() -> list[Path]:
    """Folders inside the readable ones that a kernel must not see: the grader's own code."""
    return [Path(__file__).resolve().parent]


def layers() -> dict[str, str]:
    """Each layer of the sandbox and whether this machine gives it ('' when it does, else why not)."""
    problems = {"namespaces": "", "landlock": "" if landlock_abi() else "the Linux kernel has no Landlock (5.13+)",
                "landlock network": "" if landlock_abi() >= 4 else "needs Landlock ABI 4 (Linux 6.7+)",
                "landlock signals": "" if landlock_abi() >= 6 else "needs Landlock ABI 6 (Linux 6.12+)"}
    if not sys.platform.startswith("linux"):
        problems["namespaces"] = "needs Linux"
    elif platform.machine() not in _PIVOT_ROOT:
        problems["namespaces"] = f"pivot_root's number is unknown on {platform.machine()}"
    else:
        problems["namespaces"] = _probe_namespaces()
    return problems


def _probe_namespaces() -> str:
    """Try the namespaces in a throwaway child: '' when they work, else the error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            _enter_namespaces()
            message = b""
        except OSError as error:
            message = str(error).encode()[:500]
        os.write(write, message)
        os._exit(0)
    os.close(write)
    message = os.read(read, 1000).decode()
    os.close(read)
    os.waitpid(pid, 0)
    return message


def _enter_namespaces() -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = _NEWNS | _NEWPID | _NEWNET | _NEWIPC | _NEWUTS | (0 if uid == 0 else _NEWUSER)
    _check(_libc.unshare(flags), "unshare")
    if uid != 0:
        _map_user(0, uid, 0, gid)


def _map_user(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{inside_uid} {outside_uid} 1")
    Path("/proc/self/gid_map").write_text(f"{inside_gid} {outside_gid} 1")


def _bind(source: Path, root: Path, writable: bool = False, recursive: bool = True) -> None:
    target = root / source.relative_to("/")
    if source.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        if not os.path.lexists(target):
            os.symlink(os.readlink(source), target)
        return
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    _mount(str(source), target, None, _MS_BIND | (_MS_REC if recursive else 0))
    if not writable:  # a read-only remount must keep the flags the original mount is locked with
        kept = os.statvfs(source).f_flag & (_MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        _mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | kept)


def _build_root(box: Path, limits: Limits) -> None:
    """Make the sandbox's whole file system and move into it (pid 1 of the new namespaces, still privileged)."""
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates back to the grader
    root = box / ".root"
    root.mkdir()
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=16m,mode=755")
    # the private folders first: a checkout or a box under /tmp is bound inside the new /tmp, not hidden by it
    for folder, size in (("tmp", limits.tmp_bytes), (str(HOME)[1:], limits.tmp_bytes)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        _mount("tmpfs", root / folder, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size},mode=1777")
    covered: list[Path] = []
    for path in sorted(readable_paths(), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(c) for c in covered):
            _bind(path, root)
            covered.append(path)
    for path in hidden_paths():
        target = root / path.relative_to("/")
        if target.is_dir():
            _mount("tmpfs", target, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=4k,mode=755")
    _bind(box, root, writable=True, recursive=False)
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    _mount("tmpfs", dev, "tmpfs", _MS_NOSUID | _MS_NOEXEC, "size=64k,mode=755")
    for name in _DEVICES:
        (dev / name).touch()
        _mount(f"/dev/{name}", dev / name, None, _MS_BIND)
    (dev / "shm").mkdir()
    _mount("tmpfs", dev / "shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={limits.tmp_bytes // 4},mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)
    (root / "proc").mkdir(exist_ok=True)
    _mount("proc", root / "proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    old = root / ".old"
    old.mkdir()
    _check(_libc.syscall(_PIVOT_ROOT[platform.machine()], str(root).encode(), str(old).encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", _MNT_DETACH), "umount the old root")
    os.rmdir("/.old")
    _mount(None, "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    _libc.sethostname(b"sandbox", 7)


def _local_network() -> None:
    """Bring up the new network namespace's loopback, with ephemeral ports inside `EPHEMERAL_PORTS`."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(f"{EPHEMERAL_PORTS[0]} {EPHEMERAL_PORTS[1]}")


def _drop_privileges() -> None:
    """Become a user with no capabilities that owns nothing outside the sandbox's own tmpfs folders."""
    if os.getuid() == 0 and Path("/proc/self/uid_map").read_text().split()[1] == "0":
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    else:  # root of our own user namespace: a nested one where we are an ordinary user
        _check(_libc.unshare(_NEWUSER), "unshare the inner user namespace")
        _map_user(INNER, 0, INNER, 0)
        os.setresgid(INNER, INNER, INNER)
        os.setresuid(INNER, INNER, INNER)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _isolate_descriptors(log: Path) -> None:
    """A new session with no controlling terminal; stdin /dev/null, stdout and stderr the log; nothing else open."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 1 << 16)


def _apply_rlimits(limits: Limits) -> None:
    for name, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                        (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NPROC, limits.processes),
                        (resource.RLIMIT_CORE, 0)):
        _, hard = resource.getrlimit(name)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(name, (value, value))


def _forward_signals(to: int) -> None:
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, lambda received, _frame: os.kill(to, received))


def _watch(init: int, grader: int) -> int:
    """Wait for the sandbox's first process; kill it if the grader goes away (no thread: the PID namespace
    forbids them here), so a killed grader never leaves kernels running."""
    while True:
        try:
            pid, status = os.waitpid(init, os.WNOHANG)
        except ChildProcessError:
            return 1
        if pid == init:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        if os.getppid() != grader:
            os.kill(init, signal.SIGKILL)
        time.sleep(0.1)


def _wait_for(child: int) -> int:
    """Wait for `child` (reaping anything else that ends meanwhile) and return an exit code like a shell's."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _kernel(box: Path, connection: Path, limits: Limits, module: str | None = None) -> None:
    """In the sandbox: shed the terminal, descriptors and privileges, add Landlock and limits, exec IPython (or
    `python -m module connection` for a job that is not a kernel; it answers on stdout, the log in the box)."""
    _isolate_descriptors(box / "kernel.log")
    _drop_privileges()
    writable = [Path("/tmp"), HOME, Path("/dev/shm")] + [Path("/dev") / name for name in _DEVICES]
    landlocked = limits.landlock and restrict_filesystem(readable_paths() + [Path("/proc")], writable, [box],
                                                         LOCAL_PORTS)
    os.chdir(HOME)
    _apply_rlimits(limits)
    env = {key: os.environ[key] for key in KEPT_ENV if key in os.environ}
    env.update(HOME=str(HOME), TMPDIR="/tmp", MPLCONFIGDIR=str(HOME / ".matplotlib"), MPLBACKEND="agg",
               HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", COURSE_CACHE=str(cache_dir()),
               GLOO_SOCKET_IFNAME="lo", JUPYTER_RUNTIME_DIR=str(HOME / ".jupyter"), IPYTHONDIR=str(HOME / ".ipython"),
               COURSE_SANDBOX="namespaces+landlock" if landlocked else "namespaces")
    command = [sys.executable, "-m", "ipykernel_launcher", "-f", str(connection),
               "--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"]
    if module is not None:
        command = [sys.executable, "-m", module, str(connection)]
    os.execve(sys.executable, command, env)


def main(argv: list[str] | None = None) -> None:
    """Build the sandbox around a new kernel for the connection file `-f`, and wait for it."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.instructor.sandbox")
    parser.add_argument("-f", dest="connection_file", required=True)
    parser.add_argument("--limits", default=Limits().to_json())
    parser.add_argument("--run", metavar="MODULE", help="run `python -m MODULE FILE` instead of a kernel, where "
                        "FILE (given as -f) is the job it reads")
    args = parser.parse_args(argv)
    if args.run is not None and not re.fullmatch(r"course_lib(\.[a-z_]+)+", args.run) or \
            (args.run or "").startswith("course_lib.instructor"):  # hidden inside the sandbox anyway
        parser.error(f"--run takes a course_lib module outside the instructor package, not {args.run!r}")
    limits = Limits(**json.loads(args.limits))
    connection = Path(args.connection_file).resolve()
    box = connection.parent  # the grader made it for this kernel alone: the connection file and the sockets
    if os.getuid() == 0:
        for path in (box, connection):
            os.chown(path, NOBODY, NOBODY)
    grader = os.getppid()
    readable_paths()  # resolve sys.path and the cache folder here, where the grader's environment still holds
    _enter_namespaces()
    init = os.fork()
    if init:  # outside: the process the grader manages; its signals go in, the kernel's exit code comes out
        _forward_signals(init)
        sys.exit(_watch(init, grader))
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    os.setpgid(0, 0)  # out of the launcher's process group: an interrupt reaches the kernel once, forwarded
    try:
        _local_network()
        _build_root(box, limits)
        kernel = os.fork()
        if kernel == 0:
            _kernel(box, connection, limits, args.run)
    except BaseException as error:  # noqa: BLE001  (tell the grader's log why the kernel never started)
        print(f"course sandbox: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(70)
    _forward_signals(kernel)  # pid 1 here: when it exits, every process of the submission is killed with it
    os._exit(_wait_for(kernel))


if __name__ == "__main__":
    main()
