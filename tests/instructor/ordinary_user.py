"""Run a command as an ordinary user (uid 65534) when the tests run as root, to grade as both would.

Root's home is usually closed (mode 700) while Python and the model cache live in it, so the command runs in a
private mount namespace where /root is replaced by an empty folder holding only what the grader needs."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from course_lib.core.models import cache_dir

NOBODY = 65534


def _needed() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), cache_dir().resolve(), repo})


def as_ordinary_user(command: list[str], home: Path) -> list[str]:
    """`command` wrapped to run as uid 65534 with HOME=`home`; only for a root caller."""
    if os.getuid() != 0:
        raise RuntimeError("only root can switch to an ordinary user")
    binds = [p for p in _needed() if p.is_relative_to("/root")]
    script = ["set -e"]
    if binds and not os.stat("/root").st_mode & 0o001:
        script += ['keep=$(mktemp -d)', 'mount --bind /root "$keep"', "mount -t tmpfs -o mode=755 tmpfs /root"]
        for path in binds:
            inside = shlex.quote(str(path))
            script += [f"mkdir -p {inside}", f'mount --bind "$keep"/{shlex.quote(str(path.relative_to("/root")))} {inside}']
        script += ['umount "$keep"']
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "COURSE_CACHE": str(cache_dir()),
           "LANG": "C.UTF-8", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    script += [f"exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups --inh-caps=-all env -i "
               + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + ' "$@"']
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh", *command]
