"""The seccomp filter: a deny list compiled to BPF by libseccomp, handed to bubblewrap with `--seccomp FD`.

Why libseccomp (through the small `pyseccomp` ctypes binding) rather than hand-written BPF: it maps
syscall names to numbers per architecture and adds the architecture check that stops 32-bit/x32
syscall-number tricks (a foreign-arch syscall kills the process). Why a deny list: the sandboxed
languages (JVMs, Go, V8) use a wide and shifting set of syscalls; an allow list that breaks a
toolchain update is worse than a deny list of the calls that matter for escapes. Namespace
creation and mounting are also refused by the kernel (no capabilities, one mapped uid); the
filter is the second wall, and it also closes io_uring, bpf, keyctl and perf, which a user
namespace alone does not.
"""

from __future__ import annotations

import errno

# Calls that reach kernel attack surface or host state a sandboxed program never needs.
DENIED_SYSCALLS: tuple[str, ...] = (
    # debugging other processes / reading their memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # file systems and namespaces
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "quotactl", "quotactl_fd", "fanotify_init", "swapon", "swapoff",
    # kernel attack surface
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "iopl", "ioperm", "syslog", "acct", "lookup_dcookie", "uselib", "vhangup",
    # host-wide state
    "reboot", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
)  # fmt: skip


def available() -> tuple[bool, str]:
    """Whether the filter can be built here, and why not."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        return (
            False,
            f"libseccomp binding unavailable: {exc} (pip install pyseccomp; apt install libseccomp2)",
        )
    return True, f"libseccomp deny list of {len(DENIED_SYSCALLS)} syscalls"


def compile_filter() -> bytes:
    """The filter as a BPF program (what `bwrap --seccomp` reads)."""
    import os
    import tempfile

    import pyseccomp

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except (ValueError, RuntimeError, OSError):
            # A name this libseccomp does not know on this architecture (e.g. iopl on arm64): nothing to deny.
            continue
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.flush()
        f.seek(0)
        data = os.read(f.fileno(), 1 << 20)
    return data
