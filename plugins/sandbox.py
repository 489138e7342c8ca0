"""The sandbox of the ``code`` validator: Linux namespaces, Landlock and a seccomp filter, entered
by the child Python before the answer's code runs.

A child that calls :func:`enter` (from the first lines of its ``-c`` program) is confined for the
rest of its life, and so is every process it starts; none of these can be undone from inside:

- network: a new user, network and PID namespace. The only interface is a loopback that is down,
  so no host, local or remote, is reachable (TCP, UDP, raw); and the code sees only its own
  processes, so it cannot signal the gateway or other processes of the same user. When the
  child's first process ends (or is killed on a timeout) every process it started dies with it.
- writes: a Landlock ruleset that handles every write-type file-system right (write, truncate,
  create, remove, rename, link, device ioctl) and allows them only beneath the run's temporary
  directory (and writing to ``/dev/null``). Landlock also forbids mounting.
- unix sockets: a seccomp filter refusing ``socket(AF_UNIX, ...)`` (which would otherwise reach
  local daemons through socket files such as ``/run/docker.sock``) and ``io_uring_setup``.
- belt and braces, where the kernel's Landlock ABI has them: TCP bind and connect are denied
  (ABI 4), and signals and abstract unix sockets are scoped to the sandbox (ABI 6).

Not isolated: reading. The code may read any file the gateway's user can read (the interpreter
needs its standard library), so keep secrets out of files that user can read, or run the gateway
in a container. CPU time, memory, file size and core dumps are limited by the validator with
rlimits; the number of processes is not limited (the CPU and wall-clock limits end them).

This module imports only the standard library: the child loads it by file path, without the
gateway's packages. :func:`support` is the gateway side: what this machine can provide.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import platform
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass

PROTECTIONS = ("network", "writes", "unix sockets")
"""Every protection, by the name verdict reasons use."""

HOW_TO_FIX = {
    "network": "no new network namespace: enable unprivileged user namespaces "
               "(sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0; on "
               "Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), or allow them in the "
               "container (its seccomp profile must permit unshare and clone)",
    "writes": "no Landlock: run a Linux 5.13+ kernel with Landlock enabled (CONFIG_SECURITY_"
              "LANDLOCK=y and landlock in the lsm= boot parameter)",
    "unix sockets": "no seccomp filter for this CPU architecture (x86_64 and aarch64 are "
                    "supported) or the kernel lacks seccomp",
}

EXIT_NOT_SANDBOXED = 86
"""The child's exit status when ``required`` protections could not be set up (it reports them
on the report pipe first; the status alone proves nothing, the answer could exit with it)."""

_SYS = {  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self, socket, io_uring_setup
    "x86_64": (444, 445, 446, 41, 425),
    "aarch64": (444, 445, 446, 198, 425),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

# Landlock file-system rights, with the ABI version that introduced each.
_FS_WRITE = {
    1 << 1: 1,   # write_file
    1 << 4: 1,   # remove_dir
    1 << 5: 1,   # remove_file
    1 << 6: 1,   # make_char
    1 << 7: 1,   # make_dir
    1 << 8: 1,   # make_reg
    1 << 9: 1,   # make_sock
    1 << 10: 1,  # make_fifo
    1 << 11: 1,  # make_block
    1 << 12: 1,  # make_sym
    1 << 13: 2,  # refer (link and rename across directories)
    1 << 14: 3,  # truncate
    1 << 15: 5,  # ioctl_dev
}
_FILE_RIGHTS = (1 << 1) | (1 << 14) | (1 << 15)  # the rights a rule on a file (not a dir) may carry
_NET_TCP = (1 << 0) | (1 << 1)  # bind_tcp, connect_tcp (ABI 4)
_SCOPES = (1 << 0) | (1 << 1)   # abstract unix sockets, signals (ABI 6)
_CLONE_NEWUSER, _CLONE_NEWNET, _CLONE_NEWPID = 0x10000000, 0x40000000, 0x20000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 1, 38, 22


@dataclass(frozen=True)
class Support:
    """What this machine can provide: the Landlock ABI (0: none), whether an unprivileged
    process may create user and network namespaces, whether the seccomp filter fits the CPU."""

    landlock_abi: int
    namespaces: bool
    seccomp: bool

    def missing(self) -> list[str]:
        """The protections this machine cannot provide (names from :data:`PROTECTIONS`)."""
        have = {"network": self.namespaces, "writes": self.landlock_abi >= 1,
                "unix sockets": self.seccomp}
        return [name for name in PROTECTIONS if not have[name]]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    numbers = _SYS.get(platform.machine())
    if numbers is None:
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(ctypes.c_long(numbers[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


_PROBE = """\
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
sys.exit(0 if libc.unshare(%d) == 0 else 1)
""" % (_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID)


@functools.lru_cache(maxsize=1)
def support() -> Support:
    """Probe this machine once (a short child process tries the namespaces): see :class:`Support`."""
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _PROBE], capture_output=True,
                              timeout=10, stdin=subprocess.DEVNULL, env={})
        namespaces = done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        namespaces = False
    machine = platform.machine()
    return Support(landlock_abi=landlock_abi(), namespaces=namespaces,
                   seccomp=machine in _AUDIT_ARCH and os.path.exists("/proc/sys/kernel/seccomp"))


# --- the child side ----------------------------------------------------------------------------


def enter(root: str, protections: list[str], required: bool, report_fd: int) -> None:
    """Confine this process (the child, before the answer runs) with ``protections``; write the
    ones that failed, with why, as JSON to ``report_fd`` and close it. With ``required`` and any
    failure, exit with :data:`EXIT_NOT_SANDBOXED` instead of returning. With the namespaces, the
    process forks twice: the caller continues in the new PID namespace as its second process,
    while the first two only wait and exit with its status."""
    libc = _libc()
    failed: dict[str, str] = {}
    namespaced = False
    if "network" in protections:
        try:
            _namespaces(libc)
            namespaced = True
        except OSError as exc:
            failed["network"] = f"unshare: {exc.strerror or exc}"
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        failed.update({name: "prctl(PR_SET_NO_NEW_PRIVS) failed" for name in protections
                       if name != "network"})
    else:
        if "writes" in protections:
            try:
                _landlock(libc, root)
            except OSError as exc:
                failed["writes"] = f"Landlock: {exc.strerror or exc}"
        if "unix sockets" in protections:
            try:
                _seccomp(libc)
            except OSError as exc:
                failed["unix sockets"] = f"seccomp: {exc.strerror or exc}"
    os.write(report_fd, json.dumps(failed).encode())
    os.close(report_fd)
    if required and failed:
        os._exit(EXIT_NOT_SANDBOXED)
    if namespaced:  # the first process of the namespace reaps; the second runs the code
        _fork_and_wait(libc)
        _fork_and_wait(libc)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _namespaces(libc: ctypes.CDLL) -> None:
    """A new user, network and PID namespace, with this process's uid and gid mapped to
    themselves (so files it creates and ``os.getuid()`` look as before)."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWPID), "unshare")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        with open(path, "w") as f:
            f.write(text)


def _landlock(libc: ctypes.CDLL, root: str) -> None:
    """Handle every write right (and TCP, and scopes, where the ABI has them); allow the write
    rights only beneath ``root`` (and writing to /dev/null); enforce on this process."""
    create, add_rule, restrict = _SYS[platform.machine()][:3]
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(create), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not supported or is disabled")
    fs = sum(right for right, since in _FS_WRITE.items() if abi >= since)
    net = _NET_TCP if abi >= 4 else 0
    scoped = _SCOPES if abi >= 6 else 0
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs, net, scoped))
    ruleset = _check(libc.syscall(ctypes.c_long(create), attr, ctypes.c_size_t(24 if abi >= 6
                     else 16 if abi >= 4 else 8), ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        for path, rights in ((root, fs), ("/dev/null", fs & _FILE_RIGHTS)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd))
                _check(libc.syscall(ctypes.c_long(add_rule), ctypes.c_int(ruleset), ctypes.c_int(1),
                                    rule, ctypes.c_uint32(0)), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        _check(libc.syscall(ctypes.c_long(restrict), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _seccomp(libc: ctypes.CDLL) -> None:
    """Refuse ``socket(AF_UNIX, ...)`` and ``io_uring_setup`` with EACCES (and any syscall of
    another ABI, such as 32-bit calls or x32); allow everything else."""
    machine = platform.machine()
    if machine not in _AUDIT_ARCH:
        raise OSError(errno.EOPNOTSUPP, f"no filter for {machine}")
    socket_nr, uring_nr = _SYS[machine][3:]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EACCES
    program = [
        (ld, 0, 0, 4),                      # 0: the syscall's ABI
        (jeq, 1, 0, _AUDIT_ARCH[machine]),  # 1: ours: on to 3
        (ret, 0, 0, deny),                  # 2
        (ld, 0, 0, 0),                      # 3: the syscall number
        (jge, 6, 0, 0x40000000),            # 4: x32: 11
        (jeq, 2, 0, socket_nr),             # 5: socket: 8
        (jeq, 4, 0, uring_nr),              # 6: io_uring_setup: 11
        (ret, 0, 0, allow),                 # 7
        (ld, 0, 0, 16),                     # 8: socket's domain (low 32 bits of args[0])
        (jeq, 1, 0, 1),                     # 9: AF_UNIX: 11
        (ret, 0, 0, allow),                 # 10
        (ret, 0, 0, deny),                  # 11
    ]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *op) for op in program))
    prog = ctypes.create_string_buffer(struct.pack("@HP", len(program), ctypes.addressof(filters)))
    _check(libc.prctl(_PR_SET_SECCOMP, ctypes.c_ulong(2), prog, ctypes.c_ulong(0),
                      ctypes.c_ulong(0)), "prctl(PR_SET_SECCOMP)")


def _fork_and_wait(libc: ctypes.CDLL) -> None:
    """Fork: the child returns (and is killed when this process dies); this process waits for
    it and exits as it did. (The first child of a new PID namespace is its init: when it dies,
    every process in the namespace dies.)"""
    pid = os.fork()
    if pid == 0:
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                   ctypes.c_ulong(0), ctypes.c_ulong(0))
        return
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: die of the same one, so the gateway sees it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    os._exit(code)
