"""The seccomp filter of the sandboxed worker: built in the parent, installed in the child.

`build_filter` compiles a deny-list with libseccomp (through the ctypes package `pyseccomp`) into
the classic BPF program the kernel takes, for the native architecture. The parent builds it once
and hands the bytes to the worker, which installs them with `install_filter` after its startup
imports and before it compiles the untrusted program. The worker therefore needs neither
libseccomp nor `pyseccomp` inside the sandbox, only `ctypes` and the `seccomp` system call.

The filter allows every system call by default and answers the denied ones with EPERM:
process creation (fork, vfork, clone without CLONE_THREAD; clone3 answers ENOSYS so that the C
library falls back to clone for threads), program execution, sockets, tracing and other
processes' memory, namespaces and mounts, kernel keyrings, BPF, perf, userfaultfd, io_uring
(which would bypass the socket rules), module loading, reboot and swap. Threads stay possible.

This module imports nothing from `service`: the worker imports it by file path inside the sandbox.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import tempfile

__all__ = ["DENIED_SYSCALLS", "build_filter", "install_filter", "seccomp_syscall_number", "socket_denied"]

# Answered with EPERM.
DENIED_SYSCALLS: tuple[str, ...] = (
    # process creation and program execution
    "fork",
    "vfork",
    "execve",
    "execveat",
    # network
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    # other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_open",
    "pidfd_getfd",
    "kcmp",
    # namespaces, mounts, filesystem handles
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    # kernel interfaces with a history of escapes
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "personality",
)

_CLONE_THREAD = 0x00010000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_TSYNC = 1
# The seccomp(2) system call number where it is known; elsewhere the filter is installed with
# prctl, which covers the calling thread (the worker is single-threaded at that point).
_SECCOMP_NR = {"x86_64": 317, "aarch64": 277}


def seccomp_syscall_number() -> int | None:
    """The number of the seccomp(2) system call on this machine, or None where it is not known here."""
    return _SECCOMP_NR.get(platform.machine())


def build_filter() -> bytes:
    """The deny-list compiled to classic BPF for the native architecture (8 bytes an instruction)."""
    import pyseccomp as sc  # the parent side only

    flt = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) < 0:
            continue  # not a system call of this architecture (fork, vfork on aarch64)
        flt.add_rule(deny, name)
    # clone without CLONE_THREAD makes a process; with it, a thread
    flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
    if sc.resolve_syscall(sc.Arch.NATIVE, "clone3") >= 0:
        flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp exported a BPF program of {len(program)} bytes")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes, seccomp_nr: int | None) -> str:
    """Install `program` (classic BPF) on this process; returns how; raises OSError when the kernel refuses.

    Sets no_new_privs first, as an unprivileged filter requires. With `seccomp_nr` it uses the
    seccomp system call with TSYNC, so every thread of the process gets the filter; otherwise prctl.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    if seccomp_nr is not None:
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(
            ctypes.c_long(seccomp_nr),
            ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
            ctypes.c_ulong(_SECCOMP_FILTER_FLAG_TSYNC),
            ctypes.byref(fprog),
        )
        how = "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)"
    else:
        rc = libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
        how = "prctl(PR_SET_SECCOMP)"
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{how}: {os.strerror(err) if err else f'returned {rc}'}")
    return how


def socket_denied() -> bool:
    """Whether creating a socket fails with EPERM here (the probe the worker reports after installing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
    if fd >= 0:
        libc.close(fd)
        return False
    return ctypes.get_errno() == errno.EPERM
