"""The container runtime's seccomp profile (OCI `linux.seccomp`): allow by default, refuse what
lets a process in a container reach past it.

Written for hutch in the spirit of Docker's default profile, not copied from it: Docker allows a
list and refuses the rest; this refuses a list and allows the rest, which is shorter to read and
to check. A refused call fails with EPERM, as if the capability were missing, except clone3,
which fails with ENOSYS: its flags live in a struct seccomp cannot look into, and on ENOSYS libc
falls back to clone, whose flags it can.
"""

from typing import Any

EPERM = 1
ENOSYS = 38

# What a trusted workload has no use for, and what container escapes are made of.
REFUSED = (
    # new namespaces: an unprivileged user namespace hands out every capability inside it
    "unshare", "setns",
    # mounts, including the new mount API
    "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # the kernel's keyring (not namespaced), eBPF, perf events
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    # loading kernels and modules, rebooting, swap
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff",
    # other processes' memory and descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # stalling the kernel at will (a staple of exploits); files by handle (the "shocker" escape)
    "userfaultfd", "open_by_handle_at",
    # the host's clock
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # io_uring: a second system call interface that seccomp cannot see into
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # host-wide accounting, quotas, kernel log, I/O ports, a few obsolete or raw interfaces
    "acct", "quotactl", "quotactl_fd", "syslog", "iopl", "ioperm", "lookup_dcookie",
    "fanotify_init", "nfsservctl", "vhangup", "uselib",
)  # fmt: skip

# clone's first argument is its flags on every x86 ABI: refuse each namespace flag.
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}


def profile() -> dict[str, Any]:
    """The OCI `linux.seccomp` object."""
    refuse_flags = [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }
        for flag in NAMESPACE_FLAGS.values()
    ]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        # 32-bit and x32 calls are filtered too, not a way around the filter
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": list(REFUSED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            *refuse_flags,
        ],
    }
