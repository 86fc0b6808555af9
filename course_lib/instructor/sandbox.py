"""A kernel launcher for untrusted notebooks: scrubbed environment, resource limits, a private folder.

The grader starts every submission's kernel as `python -m course_lib.instructor.sandbox --limits JSON -f CONNECTION`.
Before any student code runs, this process

- moves into a fresh empty folder that becomes HOME and TMPDIR (the submission's only place to write),
- replaces the environment with a short allow-list (no tokens, no instructor paths),
- sets CPU-time, address-space, file-size and process-count limits (`resource.setrlimit`),
- where the Linux kernel has Landlock (5.13+), forbids reading or writing anything but the Python
  installation, the model cache, system folders and its own folder, so the gradebook, the instructor's
  source (hidden tests) and other students' files cannot be opened,

and then turns into an ordinary IPython kernel with `os.execv`; the limits survive the exec.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from course_lib.core.models import cache_dir

KEPT_ENV = ("PATH", "LANG", "LC_ALL", "COURSE_PROFILE", "COURSE_CACHE", "COURSE_MODEL_SOURCE", "OPENBLAS_CORETYPE",
            "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
            "JPY_PARENT_PID", "JPY_INTERRUPT_EVENT", "JPY_SESSION_NAME")  # the kernel exits when the grader does


@dataclass(frozen=True)
class Limits:
    """Resource limits for one submission's kernel."""

    cpu_seconds: int = 300  # CPU time of the whole kernel; SIGKILL past it
    memory_bytes: int = 8 * 2**30  # address space; a memory bomb gets MemoryError or dies here
    file_bytes: int = 256 * 2**20  # largest file the submission may write
    processes: int = 256  # fork bombs stop here (counted per user, so generous)
    landlock: bool = True  # filesystem isolation where the kernel supports it

    def to_json(self) -> str:
        """The limits as the JSON the launcher reads."""
        return json.dumps(asdict(self))


# Landlock (linux/landlock.h): syscall numbers are the same on x86_64 and aarch64.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1, 2, 4, 8
_ALL_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_READ = _EXECUTE | _READ_FILE | _READ_DIR


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The Landlock ABI version of the running Linux kernel, 0 where there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


def restrict_filesystem(readable: list[Path], writable: list[Path]) -> bool:
    """Allow this process and its children to read only `readable` and write only `writable`; False if unsupported."""
    abi = landlock_abi()
    if abi == 0:
        return False
    handled = _ALL_BY_ABI.get(abi, _ALL_BY_ABI[5])
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for paths, access in ((readable, _READ), (writable, handled)):
            for path in paths:
                if not path.exists():
                    continue
                # files may only carry file rights; directories take all
                allowed = access & (_EXECUTE | _READ_FILE | _WRITE_FILE | (1 << 14)) if path.is_file() else access
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                try:
                    rule = _PathBeneath(allowed, fd)
                    if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return True


def _readable_paths() -> list[Path]:
    """What a kernel must read: Python, its packages, course_lib, the model cache and system folders."""

    paths = {Path(p) for p in ("/usr", "/lib", "/lib64", "/bin", "/etc", "/proc", "/sys", "/opt")}
    paths |= {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix)}
    paths |= {Path(p) for p in sys.path if p and Path(p).is_dir() and "site-packages" in p}
    paths |= {Path(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(Path(__file__).resolve().parents[1])  # course_lib itself, not the repository around it
    paths.add(cache_dir())
    paths.add(Path(os.path.realpath(sys.executable)).parent)
    return sorted(paths)


def _apply_rlimits(limits: Limits) -> None:
    for name, value in ((resource.RLIMIT_CPU, limits.cpu_seconds), (resource.RLIMIT_AS, limits.memory_bytes),
                        (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NPROC, limits.processes),
                        (resource.RLIMIT_CORE, 0)):
        _, hard = resource.getrlimit(name)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(name, (value, value))


def main(argv: list[str] | None = None) -> None:
    """Set up the sandbox, then exec an IPython kernel on the given connection file."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.instructor.sandbox")
    parser.add_argument("-f", dest="connection_file", required=True)
    parser.add_argument("--limits", default=Limits().to_json())
    args = parser.parse_args(argv)
    limits = Limits(**json.loads(args.limits))

    home = Path(tempfile.mkdtemp(prefix="course-submission-"))
    connection = home / ".connection.json"
    shutil.copy(args.connection_file, connection)  # the original lives where the submission may not look
    env = {key: os.environ[key] for key in KEPT_ENV if key in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), MPLCONFIGDIR=str(home / ".matplotlib"), MPLBACKEND="agg",
               HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
               JUPYTER_RUNTIME_DIR=str(home / ".jupyter"), IPYTHONDIR=str(home / ".ipython"),
               COURSE_SANDBOX="landlock" if limits.landlock and landlock_abi() else "limits-only")

    env["COURSE_CACHE"] = str(cache_dir())  # HOME moves, the converted model must not: it is read-only here
    if limits.landlock:
        restrict_filesystem(_readable_paths(), [home, Path("/dev")])
    os.chdir(home)
    _apply_rlimits(limits)
    command = [sys.executable, "-m", "ipykernel_launcher", "-f", str(connection),
               "--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"]
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    main()
