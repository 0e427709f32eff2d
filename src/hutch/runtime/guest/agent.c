/*
 * hutch-agent, the guest agent: runs the workload inside a sandbox and speaks
 * docs/guest-protocol.md to the host.
 *
 *   hutch-agent                  PID 1 of a micro-VM: mounts the root disk under an overlay
 *                                whose writable layer is the scratch disk,
 *                                then serves the virtio-serial port named "hutch.agent".
 *   hutch-agent --listen-fd N    init of a crun container: serves connections accepted on the
 *                                inherited listening socket N. Other inherited descriptors (the
 *                                lease on the container's host uid range) stay open for its life;
 *                                workloads get none of them.
 *
 * Static, no allocation beyond a few bounded buffers, no Python: it must boot fast and stay small.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION 1
#define ROOT_SERIAL "hutch-root"       /* the disks' serials, as runtime/microvm.py names them */
#define SCRATCH_SERIAL "hutch-scratch"
#define EXIT_SERIAL "hutch-exit"       /* one block where an exit waits for a host that is away */
#define VOL_SERIAL "hutch-vol-%d"      /* volume i of hutch.vols (runtime/volumes.py) */
#define MAX_VOLS 16
/* A file system frozen for a snapshot thaws by itself after this long: a host that died (or
 * forgot) between FREEZE and THAW must not leave the workload's writers blocked for ever. */
#define FREEZE_MAX_MS 10000
#define FIFREEZE _IOWR('X', 119, int) /* <linux/fs.h>, whose other names clash with libc's */
#define FITHAW _IOWR('X', 120, int)
#define RNDADDENTROPY _IOW('R', 0x03, int[2]) /* <linux/random.h> */
#define RNDRESEEDCRNG _IO('R', 0x07)
#define EXIT_MAGIC "HUTCHEXT"
#define SYN_MAGIC "HUTCHSYN"
#define ACK_MAGIC "HUTCHACK"
#define MAGIC_LEN 8
#define NONCE_LEN 16
#define HDR_LEN 12
#define MAX_IN_PAYLOAD (1u << 20)
#define MAX_OUT_PAYLOAD (64u << 10)
#define INBUF_CAP (MAX_IN_PAYLOAD + HDR_LEN + 4096)
#define INITIAL_WINDOW (256u << 10)
#define MAX_STDIN_PENDING (512u << 10)
#define MAX_PROCS 64
#define MAX_ARGS 4096
#define EXIT_ACK_TIMEOUT_MS 10000
/* The workload ended and no host is connected: a host that is merely restarting gets this long
 * to come back and collect the exit (and the output still in the pipes) the usual way. After it,
 * the exit goes on the exit disk and the VM powers off: an ended machine must not hold its host
 * memory until some agent returns (or for ever, if none does). */
#define AWAY_EXIT_GRACE_MS 5000
#define PORT_NAME "hutch.agent"

enum {
    T_RUN = 1, T_EXEC = 2, T_STDIN = 3, T_SIGNAL = 4, T_EXIT_ACK = 5, T_WINDOW = 6, T_RESIZE = 7,
    T_FREEZE = 8, T_THAW = 9, T_CLOCK = 10, T_PAUSE = 11, T_CONTINUE = 12, T_IDENTITY = 13,
    T_PRELOAD = 14,
    T_STARTED = 17, T_STDOUT = 18, T_STDERR = 19, T_EXIT = 20, T_ERROR = 21, T_STDIN_ACK = 22,
    T_FS_DONE = 23,
};
enum { I_HOSTNAME = 1, I_MACHINE_ID = 2, I_ENTROPY = 3, I_MAC = 4, I_NET = 5 }; /* IDENTITY */
enum {
    S_ARG = 1, S_ENV = 2, S_CWD = 3, S_UID = 4, S_GID = 5, S_GROUP = 6, S_STDIN = 7, S_HOST = 8,
    S_TTY = 9, S_WINSIZE = 10,
};

struct proc {
    uint32_t id;          /* 0 = free slot */
    pid_t pid;            /* 0 once reaped */
    int out_fd, err_fd;   /* -1 once drained */
    int in_fd;            /* -1 when closed or never opened */
    int pty;              /* the terminal's master side (kept for resizes), or -1 */
    uint32_t window;      /* output bytes the host will still take */
    char *in_buf;         /* stdin bytes not yet written to the pipe */
    size_t in_len;
    uint32_t in_acked;    /* written since the last STDIN_ACK */
    int in_eof;           /* the host closed stdin: close the pipe once in_buf is written */
    unsigned long oom_base; /* guest OOM kills before this process started */
    int exited, status, oom;
    int exit_sent, exit_acked;
};

static int vm_mode;           /* PID 1 of a micro-VM */
static int chan = -1;         /* virtio port, or the accepted connection */
static int listen_fd = -1;    /* container mode only */
static int need_sync = 1;     /* scan input for SYN before parsing frames */
static int main_started;
static int sigfd = -1;
static int exit_fd = -1;      /* the exit disk (VM mode; opened at boot: /dev is gone after) */
static uint64_t away_since;   /* when the ended workload was first seen with no host connected */
static unsigned char inbuf[INBUF_CAP];
static size_t inlen;
static struct proc procs[MAX_PROCS];
static struct frozen { int fd; uint64_t since; char path[256]; } frozen[MAX_VOLS];
static int net_redo;    /* IDENTITY re-addresses a running clone: failures are its errno, not fatal */
static int net_err;     /* the first of them */
static char net_ip6[64]; /* eth0's IPv6 address and prefix as last set (a clone removes it) */
static int net_p6;
static uint64_t paused_since; /* PAUSE stopped the workload (for a snapshot) at this time */

/* ---- small helpers ---------------------------------------------------------------------- */

static void logmsg(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(2, "hutch-agent: ", 13);
    w = write(2, buf, n);
    (void)w;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static int write_file(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, s, strlen(s));
    close(fd);
    return n < 0 ? -1 : 0;
}

/* The guest kernel's global OOM-kill counter: in a VM every kill is the workload's. */
static unsigned long read_oom_kills(void) {
    char buf[8192];
    int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strstr(buf, "\noom_kill ");
    return p ? strtoul(p + 10, NULL, 10) : 0;
}

/* A new VM or network namespace starts with loopback down; workloads expect 127.0.0.1. */
static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

static struct proc *proc_by_id(uint32_t id);
static void exit_fields(const struct proc *p, unsigned char b[12]);

/* The main process's exit, on the exit disk (runtime/microvm.py reads it once QEMU is gone). */
static void save_exit(const struct proc *p) {
    unsigned char block[512] = EXIT_MAGIC;
    exit_fields(p, block + 8);
    if (pwrite(exit_fd, block, sizeof block, 0) != (ssize_t)sizeof block || fsync(exit_fd) < 0)
        logmsg("saving the exit status: %s", strerror(errno));
}

static char vol_mounts[MAX_VOLS][256]; /* the volumes' mount points, as the workload sees them */
static int nvol_mounts;
static void thaw_all(void);

/* Volumes unmounted (their journals clean) before the power goes: the next sandbox mounts them
 * at once, read-only ones too. The workload is killed and reaped first, so none is busy. */
static void unmount_volumes(void) {
    if (!nvol_mounts) return;
    thaw_all();
    uint64_t start = now_ms();
    while (waitpid(-1, NULL, WNOHANG) >= 0 || errno == EINTR) {
        if (now_ms() - start > 2000) break; /* a process stuck in the kernel: detach below */
        usleep(1000);
    }
    for (int i = nvol_mounts - 1; i >= 0; i--)
        if (umount2(vol_mounts[i], 0) < 0 && umount2(vol_mounts[i], MNT_DETACH) < 0)
            logmsg("unmounting %s: %s", vol_mounts[i], strerror(errno));
}

static void power_off(void) {
    if (!vm_mode) exit(0);
    struct proc *m = proc_by_id(1);
    if (m && m->exited && !m->pid && !m->exit_acked) save_exit(m); /* no host has stored it */
    kill(-1, SIGKILL);
    unmount_volumes();
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

/* ---- the channel: virtio port or socket ------------------------------------------------- */

static void chan_lost(void) {
    need_sync = 1;
    if (!vm_mode && chan >= 0) {
        close(chan);
        chan = -1;
    }
}

/* Container mode: wait for the next host connection. */
static void chan_accept(void) {
    while (chan < 0) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) {
            chan = c;
            inlen = 0;
            need_sync = 1;
            return;
        }
        if (errno == EAGAIN || errno == EINTR) {
            struct pollfd p = {listen_fd, POLLIN, 0};
            poll(&p, 1, -1);
            continue;
        }
        logmsg("accept: %s", strerror(errno));
        sleep(1);
    }
}

/* VM mode: a disconnected virtio port reports POLLHUP forever; wait until a host is back. */
static int port_connected(void) {
    struct pollfd p = {chan, 0, 0};
    poll(&p, 1, 0);
    return !(p.revents & POLLHUP);
}

/* Write everything, blocking; returns -1 if the host went away (the frame must be resent). */
static int chan_write_all(const unsigned char *buf, size_t len) {
    while (len > 0) {
        if (chan < 0) return -1;
        ssize_t n = vm_mode ? write(chan, buf, len) : send(chan, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {chan, POLLOUT, 0};
            poll(&p, 1, 200);
            if (vm_mode && (p.revents & POLLHUP) && !(p.revents & POLLOUT)) {
                need_sync = 1;
                return -1;
            }
            continue;
        }
        chan_lost();
        return -1;
    }
    return 0;
}

static int chan_fill(void);
static void send_frame(int type, uint32_t id, const void *payload, size_t len);

static void handle_signals(void);

/* VM mode, no host connected: keep reaping, and power off once the main process has ended and
 * no host came within AWAY_EXIT_GRACE_MS (power_off saves its exit first). */
static void wait_away(void) {
    struct pollfd p = {sigfd, POLLIN, 0};
    if (poll(&p, 1, 50) > 0) handle_signals();
    struct proc *m = proc_by_id(1);
    if (!m || !m->exited || m->pid) return;
    if (!away_since) away_since = now_ms();
    else if (now_ms() - away_since >= AWAY_EXIT_GRACE_MS) power_off();
}

/* Block until the handshake with a (new) host is done, then resend unacknowledged exits. */
static int thaw_overdue(void);

static void chan_sync(void) {
    while (need_sync) {
        thaw_overdue(); /* a host that went away while a volume was frozen */
        if (!vm_mode && chan < 0) chan_accept();
        if (vm_mode && !port_connected()) {
            wait_away();
            continue;
        }
        away_since = 0;
        unsigned char *m = memmem(inbuf, inlen, SYN_MAGIC, MAGIC_LEN);
        if (m && (size_t)(inbuf + inlen - m) >= MAGIC_LEN + NONCE_LEN) {
            unsigned char ack[MAGIC_LEN + NONCE_LEN + 16];
            memcpy(ack, ACK_MAGIC, MAGIC_LEN);
            memcpy(ack + MAGIC_LEN, m + MAGIC_LEN, NONCE_LEN);
            put32(ack + 24, PROTO_VERSION);
            put32(ack + 28, main_started ? 1 : 0);
            struct timespec ts;
            clock_gettime(CLOCK_BOOTTIME, &ts);
            uint64_t up = (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
            put32(ack + 32, up >> 32);
            put32(ack + 36, (uint32_t)up);
            size_t used = (m - inbuf) + MAGIC_LEN + NONCE_LEN;
            memmove(inbuf, inbuf + used, inlen - used);
            inlen -= used;
            if (chan_write_all(ack, sizeof ack) < 0) continue;
            need_sync = 0;
            for (int i = 0; i < MAX_PROCS; i++) {
                struct proc *p = &procs[i];
                if (p->id && p->exit_sent && !p->exit_acked) p->exit_sent = 0; /* resent below */
            }
            return;
        }
        /* keep the tail that may hold the start of a magic; drop the rest */
        if (!m && inlen > MAGIC_LEN + NONCE_LEN) {
            size_t keep = MAGIC_LEN + NONCE_LEN;
            memmove(inbuf, inbuf + inlen - keep, keep);
            inlen = keep;
        }
        struct pollfd p = {chan, POLLIN, 0};
        int r = poll(&p, 1, 200);
        if (r > 0 && (p.revents & POLLIN)) chan_fill();
        else if (r > 0 && (p.revents & (POLLHUP | POLLERR)) && !vm_mode) chan_lost();
    }
}

static void send_frame(int type, uint32_t id, const void *payload, size_t len) {
    unsigned char hdr[HDR_LEN] = {0};
    hdr[0] = type;
    put32(hdr + 4, id);
    put32(hdr + 8, (uint32_t)len);
    for (;;) {
        if (need_sync) chan_sync();
        if (chan_write_all(hdr, HDR_LEN) == 0 &&
            (len == 0 || chan_write_all(payload, len) == 0))
            return;
    }
}

/* Read what is available into inbuf; 0 on EOF/disconnect. */
static int chan_fill(void) {
    if (chan < 0) return 0;
    if (inlen == sizeof inbuf) { /* a peer that never completes a frame: start over */
        inlen = 0;
        need_sync = 1;
    }
    ssize_t n = read(chan, inbuf + inlen, sizeof inbuf - inlen);
    if (n > 0) {
        inlen += n;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    chan_lost(); /* EOF: in a VM this means the host end is not connected */
    return 0;
}

/* ---- processes ---------------------------------------------------------------------------- */

static struct proc *proc_by_id(uint32_t id) {
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].id == id) return &procs[i];
    return NULL;
}

static void proc_free(struct proc *p) {
    if (p->pty >= 0) close(p->pty);
    free(p->in_buf);
    memset(p, 0, sizeof *p);
}

/* The EXIT payload: i32 code, u32 signal, u32 flags. */
static void exit_fields(const struct proc *p, unsigned char b[12]) {
    int code = 0, sig = 0;
    if (WIFEXITED(p->status)) code = WEXITSTATUS(p->status);
    else if (WIFSIGNALED(p->status)) {
        sig = WTERMSIG(p->status);
        code = 128 + sig;
    }
    put32(b, (uint32_t)code);
    put32(b + 4, (uint32_t)sig);
    put32(b + 8, p->oom ? 1 : 0);
}

static void send_exit(struct proc *p) {
    unsigned char b[12];
    exit_fields(p, b);
    p->exit_sent = 1;
    send_frame(T_EXIT, p->id, b, sizeof b);
}

static void close_stdin(struct proc *p) {
    if (p->in_fd >= 0) close(p->in_fd);
    p->in_fd = -1;
    free(p->in_buf);
    p->in_buf = NULL;
    p->in_len = 0;
}

/* Read one chunk of a process's output within its window; drains fully once it has exited. */
static void pump_output(struct proc *p, int *fdp, int type) {
    unsigned char buf[MAX_OUT_PAYLOAD];
    while (*fdp >= 0 && p->window > 0) {
        size_t want = p->window < sizeof buf ? p->window : sizeof buf;
        ssize_t n = read(*fdp, buf, want);
        if (n > 0) {
            p->window -= n;
            send_frame(type, p->id, buf, n);
            if (!p->exited) return; /* one chunk per poll round keeps processes fair */
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        /* EOF, an error, or (after exit) an empty pipe: the stream is over. Grandchildren that
         * kept the pipe open lose it; the process we were asked to run is done. */
        if (n < 0 && errno == EAGAIN && !p->exited) return;
        close(*fdp);
        *fdp = -1;
        send_frame(type, p->id, NULL, 0);
    }
}

static void maybe_finish(struct proc *p) {
    if (!p->exited || p->exit_sent) return;
    if (p->pid == 0) { /* reaped: drain what the pipes still hold, then report */
        pump_output(p, &p->out_fd, T_STDOUT);
        pump_output(p, &p->err_fd, T_STDERR);
    }
    if (p->out_fd < 0 && p->err_fd < 0) {
        close_stdin(p);
        if (p->pty >= 0) close(p->pty);
        p->pty = -1;
        send_exit(p);
    }
}

struct spec {
    char *argv[MAX_ARGS + 1];
    char *envp[MAX_ARGS + 1];
    int argc, envc;
    const char *cwd, *hostname;
    uid_t uid;
    gid_t gid;
    gid_t groups[64];
    int ngroups;
    int want_stdin;
    int tty;                  /* a pseudo-terminal for stdin, stdout and stderr */
    struct winsize size;      /* its size (0 x 0: 24 x 80) */
    int make_cwd; /* the workload's own process: a missing working directory is made, as Docker does */
};

/* Parse a process spec in place (strings are NUL-terminated by copying into a fresh buffer). */
static int parse_spec(const unsigned char *pl, uint32_t len, struct spec *s, char *store) {
    memset(s, 0, sizeof *s);
    s->cwd = "/";
    uint32_t off = 0;
    char *o = store;
    while (off + 5 <= len) {
        int tag = pl[off];
        uint32_t l = get32(pl + off + 1);
        off += 5;
        if (l > len - off) return -1;
        const unsigned char *v = pl + off;
        off += l;
        switch (tag) {
        case S_ARG: case S_ENV: case S_CWD: case S_HOST: {
            memcpy(o, v, l);
            o[l] = 0;
            if (tag == S_ARG && s->argc < MAX_ARGS) s->argv[s->argc++] = o;
            else if (tag == S_ENV && s->envc < MAX_ARGS) s->envp[s->envc++] = o;
            else if (tag == S_CWD) s->cwd = o;
            else if (tag == S_HOST) s->hostname = o;
            o += l + 1;
            break;
        }
        case S_UID: if (l == 4) s->uid = get32(v); break;
        case S_GID: if (l == 4) s->gid = get32(v); break;
        case S_GROUP: if (l == 4 && s->ngroups < 64) s->groups[s->ngroups++] = get32(v); break;
        case S_STDIN: if (l == 1) s->want_stdin = v[0]; break;
        case S_TTY: if (l == 1) s->tty = v[0]; break;
        case S_WINSIZE:
            if (l == 4) {
                s->size.ws_row = (unsigned short)(v[0] << 8 | v[1]);
                s->size.ws_col = (unsigned short)(v[2] << 8 | v[3]);
            }
            break;
        default: break; /* unknown tags are for newer guest agents */
        }
    }
    return s->argc > 0 ? 0 : -1;
}

static void report_spawn_failure(struct proc *p, int code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    if (n >= (int)sizeof msg) n = sizeof msg - 1;
    send_frame(T_ERROR, p->id, msg, n);
    p->exited = 1;
    p->status = W_EXITCODE(code, 0);
    send_exit(p);
}

/* mkdir -p, each missing directory root's and 0755 (Docker makes a missing WORKDIR so). */
static int make_dirs(const char *path) {
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != 0) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -1;
        *p = c;
        if (!c) return 0;
    }
}

/* Child side of spawn: never returns. Errors go to errfd as "stage errno". */
static void child_exec(struct spec *s, int in_fd, int out_fd, int err_fd, int errfd) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    /* with a terminal, in_fd = out_fd = err_fd is its slave side: make it the session's
     * controlling terminal, so Ctrl-C there is SIGINT for the foreground job */
    if (s->tty) {
        ioctl(in_fd, TIOCSCTTY, 0);
        int owned = fchown(in_fd, s->uid, (gid_t)-1); /* the workload's, as login makes it */
        (void)owned;
    }
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    if (errfd != 3) {
        dup2(errfd, 3);
        fcntl(3, F_SETFD, FD_CLOEXEC);
        errfd = 3;
    }
    syscall(SYS_close_range, 4, ~0u, 0);
    /* the guest agent protects itself, not the workload */
    write_file("/proc/self/oom_score_adj", "0");
    int stage = 0, err = 0;
    if (chdir(s->cwd) < 0 &&
        (errno != ENOENT || !s->make_cwd || make_dirs(s->cwd) < 0 || chdir(s->cwd) < 0)) {
        stage = 1;
        err = errno;
        goto fail;
    }
    if (setgroups(s->ngroups, s->groups) < 0) { stage = 2; err = errno; goto fail; }
    if (setgid(s->gid) < 0) { stage = 2; err = errno; goto fail; }
    if (setuid(s->uid) < 0) { stage = 2; err = errno; goto fail; }
    s->envp[s->envc] = NULL;
    s->argv[s->argc] = NULL;
    environ = s->envp; /* execvp searches the workload's PATH, not ours */
    execvp(s->argv[0], s->argv);
    stage = 3;
    err = errno;
fail:;
    int msg[2] = {stage, err};
    ssize_t w = write(errfd, msg, sizeof msg);
    (void)w;
    _exit(127);
}

/* A pseudo-terminal for a process: out[0] reads its output and in[1] (with stdin) writes its
 * input, both duplicates of the master side, kept in p->pty for resizes; out[1] = in[0] is the
 * slave side the child takes as stdin, stdout and stderr; err is none. */
static int open_pty(struct proc *p, struct spec *s, int out[2], int err[2], int in[2]) {
    char name[64];
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) return -1;
    if (grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, sizeof name) != 0)
        goto fail;
    /* a new terminal is 0 x 0, which `stty size` and editors refuse: give them the classic */
    if (!s->size.ws_row) s->size.ws_row = 24;
    if (!s->size.ws_col) s->size.ws_col = 80;
    ioctl(master, TIOCSWINSZ, &s->size);
    int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0) goto fail;
    out[0] = fcntl(master, F_DUPFD_CLOEXEC, 3);
    in[1] = s->want_stdin ? fcntl(master, F_DUPFD_CLOEXEC, 3) : -1;
    if (out[0] < 0) {
        close(slave);
        goto fail;
    }
    out[1] = in[0] = slave;
    err[0] = err[1] = -1;
    p->pty = master;
    return 0;
fail:;
    int e = errno;
    close(master);
    errno = e;
    return -1;
}

static void spawn(uint32_t id, const unsigned char *pl, uint32_t len) {
    struct proc *p = NULL;
    if (proc_by_id(id)) return; /* a duplicate request after a resync */
    for (int i = 0; i < MAX_PROCS; i++)
        if (!procs[i].id) { p = &procs[i]; break; }
    if (!p) {
        struct proc tmp = {.id = id};
        report_spawn_failure(&tmp, 126, "too many processes in this sandbox (max %d)", MAX_PROCS);
        return;
    }
    memset(p, 0, sizeof *p);
    p->id = id;
    p->out_fd = p->err_fd = p->in_fd = p->pty = -1;
    p->window = INITIAL_WINDOW;

    static struct spec s;
    char *store = malloc(2 * (size_t)len + 16); /* every string gains a NUL */
    if (!store || parse_spec(pl, len, &s, store) < 0) {
        free(store);
        report_spawn_failure(p, 126, "malformed process spec");
        return;
    }
    if (id == 1 && s.hostname && vm_mode) sethostname(s.hostname, strlen(s.hostname));
    s.make_cwd = id == 1; /* exec, like docker exec, needs a directory that is there */

    int out[2], err[2], in[2] = {-1, -1}, ep[2];
    if (s.tty) {
        if (open_pty(p, &s, out, err, in) < 0) {
            free(store);
            report_spawn_failure(p, 126, "pseudo-terminal: %s", strerror(errno));
            return;
        }
        if (pipe2(ep, O_CLOEXEC) < 0) {
            free(store);
            close(out[1]);
            close(out[0]);
            if (in[1] >= 0) close(in[1]);
            report_spawn_failure(p, 126, "pipe: %s", strerror(errno));
            return;
        }
    } else if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 ||
               pipe2(ep, O_CLOEXEC) < 0) {
        free(store);
        report_spawn_failure(p, 126, "pipe: %s", strerror(errno));
        return;
    } else if (s.want_stdin) {
        if (pipe2(in, O_CLOEXEC) < 0) in[0] = in[1] = -1;
    } else {
        in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    pid_t pid = fork();
    if (pid == 0) child_exec(&s, in[0], out[1], s.tty ? out[1] : err[1], ep[1]);
    close(out[1]); /* with a terminal, out[1] is its slave side, and err and in[0] are none */
    if (err[1] >= 0) close(err[1]);
    close(ep[1]);
    if (in[0] >= 0 && !s.tty) close(in[0]);
    int msg[2];
    ssize_t n = pid > 0 ? read(ep[0], msg, sizeof msg) : -1;
    close(ep[0]);
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->in_fd = in[1];
    set_nonblock(p->out_fd);
    if (p->err_fd >= 0) set_nonblock(p->err_fd);
    if (p->in_fd >= 0) set_nonblock(p->in_fd);
    if (pid < 0 || n == (ssize_t)sizeof msg) {
        static const char *stages[] = {"fork", "working directory", "user", "exec"};
        int stage = pid < 0 ? 0 : msg[0], e = pid < 0 ? errno : msg[1];
        if (pid > 0) waitpid(pid, NULL, 0);
        close(p->out_fd);
        if (p->err_fd >= 0) close(p->err_fd);
        p->out_fd = p->err_fd = -1;
        close_stdin(p);
        if (p->pty >= 0) close(p->pty);
        p->pty = -1;
        const char *what = stage == 1 ? s.cwd : s.argv[0];
        report_spawn_failure(p, stage == 3 && e == ENOENT ? 127 : 126, "%s %s: %s",
                             stages[stage], what, strerror(e));
        free(store);
        return;
    }
    free(store);
    p->pid = pid;
    if (id == 1) main_started = 1;
    if (vm_mode) p->oom_base = read_oom_kills();
    unsigned char b[4];
    put32(b, (uint32_t)pid);
    send_frame(T_STARTED, id, b, 4);
    if (s.tty) send_frame(T_STDERR, id, NULL, 0); /* a terminal has one output stream */
}

static void write_stdin(struct proc *p) {
    while (p->in_fd >= 0 && p->in_len > 0) {
        ssize_t n = write(p->in_fd, p->in_buf, p->in_len);
        if (n > 0) {
            memmove(p->in_buf, p->in_buf + n, p->in_len - n);
            p->in_len -= n;
            p->in_acked += n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        close_stdin(p); /* the reader is gone */
        break;
    }
    if (p->in_eof && p->in_len == 0) close_stdin(p);
    if (p->in_acked) {
        unsigned char b[4];
        put32(b, p->in_acked);
        p->in_acked = 0;
        send_frame(T_STDIN_ACK, p->id, b, 4);
    }
}

/* ---- freezing a volume's file system (FREEZE / THAW, for the host's snapshots) ------------ */

static void fs_done(uint32_t id, int err) {
    unsigned char b[4];
    put32(b, (uint32_t)err);
    send_frame(T_FS_DONE, id, b, 4);
}

static void thaw(struct frozen *f) {
    if (ioctl(f->fd, FITHAW, 0) < 0 && errno != EINVAL) /* EINVAL: not frozen (any more) */
        logmsg("thawing %s: %s", f->path, strerror(errno));
    close(f->fd);
    f->fd = 0;
}

/* FREEZE: payload the mount point, as the workload sees it; the answer is FS_DONE with errno. */
static void freeze(uint32_t id, const unsigned char *pl, uint32_t len) {
    char path[256];
    struct frozen *slot = NULL;
    if (len == 0 || len >= sizeof path) { fs_done(id, ENAMETOOLONG); return; }
    memcpy(path, pl, len);
    path[len] = 0;
    for (int i = 0; i < MAX_VOLS; i++) {
        if (frozen[i].fd && strcmp(frozen[i].path, path) == 0) { fs_done(id, EBUSY); return; }
        if (!frozen[i].fd && !slot) slot = &frozen[i];
    }
    if (!slot) { fs_done(id, EMFILE); return; }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) { fs_done(id, errno); return; }
    if (ioctl(fd, FIFREEZE, 0) < 0) {
        int e = errno;
        close(fd);
        fs_done(id, e);
        return;
    }
    slot->fd = fd;
    slot->since = now_ms();
    snprintf(slot->path, sizeof slot->path, "%s", path);
    fs_done(id, 0);
}

static void thaw_all(void) {
    for (int i = 0; i < MAX_VOLS; i++)
        if (frozen[i].fd) thaw(&frozen[i]);
}

static void thaw_path(uint32_t id, const unsigned char *pl, uint32_t len) {
    for (int i = 0; i < MAX_VOLS; i++) {
        struct frozen *f = &frozen[i];
        if (f->fd && strlen(f->path) == len && memcmp(f->path, pl, len) == 0) {
            thaw(f);
            fs_done(id, 0);
            return;
        }
    }
    fs_done(id, EINVAL);
}

/* Thaw what has been frozen too long; the poll timeout until the next one is due (-1: none). */
static int thaw_overdue(void) {
    int next = -1;
    if (paused_since) { /* a host that died (or forgot) between PAUSE and CONTINUE */
        uint64_t held = now_ms() - paused_since;
        if (held >= FREEZE_MAX_MS) {
            logmsg("the workload was paused for %d s with no CONTINUE: continuing it",
                   FREEZE_MAX_MS / 1000);
            kill(-1, SIGCONT);
            paused_since = 0;
        } else {
            next = (int)(FREEZE_MAX_MS - held);
        }
    }
    for (int i = 0; i < MAX_VOLS; i++) {
        struct frozen *f = &frozen[i];
        if (!f->fd) continue;
        uint64_t held = now_ms() - f->since;
        if (held >= FREEZE_MAX_MS) {
            logmsg("%s was frozen for %d s with no THAW: thawing it", f->path, FREEZE_MAX_MS / 1000);
            thaw(f);
            continue;
        }
        int left = (int)(FREEZE_MAX_MS - held);
        if (next < 0 || left < next) next = left;
    }
    return next;
}

/* IDENTITY: a clone of a snapshot becomes its own machine before its workload continues.
 * Records as in a process spec (tag u8, length u32): hostname, machine-id, entropy, MACs. */
static int write_machine_id(const char *id, size_t len) {
    struct stat st;
    if (stat("/etc", &st) < 0 || !S_ISDIR(st.st_mode)) return 0; /* an image without /etc */
    char text[40];
    if (len != 32) return EINVAL;
    memcpy(text, id, 32);
    text[32] = '\n';
    unlink("/etc/machine-id"); /* an image's symlink there is replaced, never followed */
    int fd = open("/etc/machine-id", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
    if (fd < 0) return errno;
    int err = write(fd, text, 33) == 33 ? 0 : errno ? errno : EIO;
    close(fd);
    return err;
}

static int add_entropy(const unsigned char *bytes, uint32_t len) {
    struct { int entropy_count, buf_size; unsigned char buf[512]; } pool;
    if (len > sizeof pool.buf) len = sizeof pool.buf;
    pool.entropy_count = (int)len * 8;
    pool.buf_size = (int)len;
    memcpy(pool.buf, bytes, len);
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    /* credited, then the CRNG reseeds at once: the clone's output diverges from its twins' */
    int err = ioctl(fd, RNDADDENTROPY, &pool) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0 ? errno : 0;
    close(fd);
    return err;
}

static int set_mac(unsigned index, const unsigned char mac[6]) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "eth%u", index);
    ifr.ifr_hwaddr.sa_family = 1; /* ARPHRD_ETHER */
    memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return errno;
    /* virtio-net changes it live, and tells QEMU, whose receive filter follows */
    int err = ioctl(s, SIOCSIFHWADDR, &ifr) < 0 ? errno : 0;
    close(s);
    return err;
}

static void net_setup(const char *root);
static char cmdline[4096];

/* The clone's own addresses, routes, resolv.conf and hosts: the boot's hutch.net flags (as
 * runtime/wiring.py writes them), applied again over the snapshot's. */
static int renumber(const char *params, uint32_t n) {
    if (n >= sizeof cmdline) return E2BIG;
    memcpy(cmdline, params, n); /* read only at boot, where boot_param looks */
    cmdline[n] = 0;
    net_redo = 1;
    net_err = 0;
    net_setup("");
    net_redo = 0;
    return net_err;
}

static void identity(uint32_t id, const unsigned char *pl, uint32_t len) {
    int err = 0;
    for (uint32_t off = 0; off + 5 <= len;) {
        int tag = pl[off];
        uint32_t n = get32(pl + off + 1);
        const unsigned char *v = pl + off + 5;
        if (n > len - off - 5) { err = EINVAL; break; }
        int e = 0;
        if (tag == I_HOSTNAME) e = sethostname((const char *)v, n) < 0 ? errno : 0;
        else if (tag == I_MACHINE_ID) e = write_machine_id((const char *)v, n);
        else if (tag == I_ENTROPY) e = add_entropy(v, n);
        else if (tag == I_MAC && n == 7) e = set_mac(v[0], v + 1);
        else if (tag == I_NET) e = renumber((const char *)v, n);
        if (e && !err) err = e;
        off += 5 + n;
    }
    fs_done(id, err);
}

/* PRELOAD: a template reads the program its process would run (and that program's ELF
 * interpreter) into its page cache, which a snapshot keeps for its clones: their first exec of
 * it reads no disk. `interp` (if not NULL) gets the interpreter's path, or stays empty. */
static int read_through(const char *path, char *interp, size_t isize) {
    static char buf[64 << 10];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    Elf64_Ehdr eh;
    memset(&eh, 0, sizeof eh);
    ssize_t n;
    int first = 1;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        if (first && (size_t)n >= sizeof eh) memcpy(&eh, buf, sizeof eh);
        first = 0;
    }
    int err = n < 0 ? errno : 0;
    if (interp && memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 &&
        eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_phentsize == sizeof(Elf64_Phdr)) {
        for (int i = 0; i < eh.e_phnum && i < 64; i++) {
            Elf64_Phdr ph;
            off_t at = (off_t)eh.e_phoff + (off_t)i * (off_t)sizeof ph;
            if (pread(fd, &ph, sizeof ph, at) != (ssize_t)sizeof ph) break;
            if (ph.p_type != PT_INTERP) continue;
            if (ph.p_filesz > 0 && ph.p_filesz < isize &&
                pread(fd, interp, ph.p_filesz, (off_t)ph.p_offset) == (ssize_t)ph.p_filesz)
                interp[ph.p_filesz] = 0; /* the path's own NUL is in it too */
            break;
        }
    }
    close(fd);
    return err;
}

/* The payload is a process spec: its argv[0], found as execvp finds it (its PATH, else
 * /bin:/usr/bin; relative to its working directory). Answered by FS_DONE (ENOENT: not found). */
static void preload(uint32_t id, const unsigned char *pl, uint32_t len) {
    static struct spec s;
    char *store = malloc(2 * (size_t)len + 16);
    if (!store || parse_spec(pl, len, &s, store) < 0) {
        free(store);
        fs_done(id, EINVAL);
        return;
    }
    const char *prog = s.argv[0], *path = "/bin:/usr/bin";
    for (int i = 0; i < s.envc; i++)
        if (strncmp(s.envp[i], "PATH=", 5) == 0) path = s.envp[i] + 5;
    char full[4096], interp[256] = "";
    int err = ENOENT;
    if (strchr(prog, '/')) {
        snprintf(full, sizeof full, "%s%s%s", prog[0] == '/' ? "" : s.cwd,
                 prog[0] == '/' ? "" : "/", prog);
        err = read_through(full, interp, sizeof interp);
    } else {
        for (const char *d = path; err == ENOENT && *d;) {
            size_t dl = strcspn(d, ":");
            snprintf(full, sizeof full, "%.*s/%s", (int)dl, d, prog);
            if (access(full, X_OK) == 0) err = read_through(full, interp, sizeof interp);
            d += dl + (d[dl] == ':');
        }
    }
    if (!err && *interp) err = read_through(interp, NULL, 0);
    free(store);
    fs_done(id, err);
}

static void handle_frame(int type, uint32_t id, const unsigned char *pl, uint32_t len) {
    struct proc *p = proc_by_id(id);
    switch (type) {
    case T_RUN:
        if (id == 1 && !main_started && !p) spawn(1, pl, len);
        break;
    case T_EXEC:
        if (id > 1) spawn(id, pl, len);
        break;
    case T_STDIN:
        if (!p || p->in_fd < 0) break;
        if (len == 0) {
            /* a terminal's reader sees the end of input as its EOF character (Ctrl-D) */
            if (p->pty >= 0 && !p->in_eof) {
                char *grown = realloc(p->in_buf, p->in_len + 1);
                if (grown) {
                    p->in_buf = grown;
                    p->in_buf[p->in_len++] = 4;
                }
            }
            p->in_eof = 1;
            write_stdin(p);
            break;
        }
        if (p->in_len + len > MAX_STDIN_PENDING) { close_stdin(p); break; }
        p->in_buf = realloc(p->in_buf, p->in_len + len);
        if (!p->in_buf) { close_stdin(p); break; }
        memcpy(p->in_buf + p->in_len, pl, len);
        p->in_len += len;
        write_stdin(p);
        break;
    case T_SIGNAL:
        if (p && p->pid > 0 && len == 4) kill(p->pid, (int)get32(pl));
        break;
    case T_EXIT_ACK:
        if (p && p->exit_sent) {
            p->exit_acked = 1;
            if (id == 1) power_off();
            proc_free(p);
        }
        break;
    case T_RESIZE:
        if (p && p->pty >= 0 && len == 4) {
            struct winsize ws = {.ws_row = (unsigned short)(pl[0] << 8 | pl[1]),
                                 .ws_col = (unsigned short)(pl[2] << 8 | pl[3])};
            ioctl(p->pty, TIOCSWINSZ, &ws); /* the kernel sends SIGWINCH to the foreground job */
        }
        break;
    case T_FREEZE:
        freeze(id, pl, len);
        break;
    case T_THAW:
        thaw_path(id, pl, len);
        break;
    case T_CLOCK: /* resumed from a saved state: the clock stood still meanwhile */
        if (len == 8) {
            uint64_t ns = (uint64_t)get32(pl) << 32 | get32(pl + 4);
            struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                                  .tv_nsec = (long)(ns % 1000000000u)};
            if (clock_settime(CLOCK_REALTIME, &ts) < 0) logmsg("clock: %s", strerror(errno));
        }
        break;
    case T_PAUSE: /* for a snapshot: its memory then holds a workload that runs nothing */
        kill(-1, SIGSTOP);
        paused_since = now_ms();
        if (!paused_since) paused_since = 1;
        fs_done(id, 0);
        break;
    case T_CONTINUE:
        if (paused_since) kill(-1, SIGCONT);
        paused_since = 0;
        break;
    case T_IDENTITY:
        identity(id, pl, len);
        break;
    case T_PRELOAD:
        preload(id, pl, len);
        break;
    case T_WINDOW:
        if (p && len == 4) {
            uint64_t w = (uint64_t)p->window + get32(pl);
            p->window = w > 0x7fffffff ? 0x7fffffff : (uint32_t)w;
        }
        break;
    default:
        break; /* a newer host's frame: skip it */
    }
}

static void process_input(void) {
    size_t off = 0;
    while (!need_sync && inlen - off >= HDR_LEN) {
        const unsigned char *h = inbuf + off;
        uint32_t len = get32(h + 8);
        if (len > MAX_IN_PAYLOAD || h[0] == 'H') { /* 'H' starts HUTCHSYN */
            need_sync = 1;
            break;
        }
        if (inlen - off < HDR_LEN + len) break;
        handle_frame(h[0], get32(h + 4), h + HDR_LEN, len);
        off += HDR_LEN + len;
    }
    /* what is left is an incomplete frame, or (after need_sync) what chan_sync will scan */
    memmove(inbuf, inbuf + off, inlen - off);
    inlen -= off;
}

static void reap(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &procs[i];
            if (!p->id || p->pid != pid) continue;
            p->pid = 0;
            p->exited = 1;
            p->status = st;
            if (vm_mode && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
                p->oom = read_oom_kills() > p->oom_base;
        }
    }
}

static void handle_signals(void) {
    struct signalfd_siginfo si;
    while (read(sigfd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGCHLD) reap();
        else { /* crun kill and friends: pass it on to the workload */
            struct proc *m = proc_by_id(1);
            if (m && m->pid > 0) kill(m->pid, si.ssi_signo);
        }
    }
}

static void serve(void) {
    uint64_t exit_wait_since = 0;
    for (;;) {
        if (need_sync) chan_sync();
        process_input(); /* frames that came in with the handshake */
        struct pollfd pf[2 + MAX_PROCS * 3];
        struct proc *owner[2 + MAX_PROCS * 3];
        int n = 0, timeout = -1;
        pf[n] = (struct pollfd){sigfd, POLLIN, 0};
        owner[n++] = NULL;
        pf[n] = (struct pollfd){chan, POLLIN, 0};
        owner[n++] = NULL;
        for (int i = 0; i < MAX_PROCS; i++) {
            struct proc *p = &procs[i];
            if (!p->id) continue;
            maybe_finish(p);
            if (!p->id) continue;
            if (p->window > 0 && p->out_fd >= 0) {
                pf[n] = (struct pollfd){p->out_fd, POLLIN, 0};
                owner[n++] = p;
            }
            if (p->window > 0 && p->err_fd >= 0) {
                pf[n] = (struct pollfd){p->err_fd, POLLIN, 0};
                owner[n++] = p;
            }
            if (p->in_fd >= 0 && p->in_len > 0) {
                pf[n] = (struct pollfd){p->in_fd, POLLOUT, 0};
                owner[n++] = p;
            }
        }
        struct proc *m = proc_by_id(1);
        if (m && m->exit_sent && !m->exit_acked) {
            if (!exit_wait_since) exit_wait_since = now_ms();
            if (now_ms() - exit_wait_since > EXIT_ACK_TIMEOUT_MS) power_off();
            timeout = 500;
        }
        int thaw_in = thaw_overdue();
        if (thaw_in >= 0 && (timeout < 0 || thaw_in < timeout)) timeout = thaw_in;
        if (need_sync) continue;
        if (poll(pf, n, timeout) < 0 && errno != EINTR) {
            logmsg("poll: %s", strerror(errno));
            continue;
        }
        if (pf[0].revents) handle_signals();
        if (pf[1].revents & POLLIN) {
            if (chan_fill()) process_input();
        } else if (pf[1].revents & (POLLHUP | POLLERR)) {
            if (vm_mode) poll(NULL, 0, 50); /* the host is away; chan_sync waits for it */
            chan_lost();
        }
        for (int i = 2; i < n; i++) {
            struct proc *p = owner[i];
            if (!pf[i].revents || !p->id) continue;
            if (pf[i].fd == p->out_fd) pump_output(p, &p->out_fd, T_STDOUT);
            else if (pf[i].fd == p->err_fd) pump_output(p, &p->err_fd, T_STDERR);
            else if (pf[i].fd == p->in_fd) write_stdin(p);
        }
    }
}

/* ---- micro-VM boot ------------------------------------------------------------------------ */

static const char *boot_param(const char *key) {
    static char val[sizeof cmdline];
    size_t kl = strlen(key);
    for (char *p = cmdline; (p = strstr(p, key)); p += kl) {
        if (p != cmdline && p[-1] != ' ') continue;
        if (p[kl] == '=') {
            size_t i = 0;
            for (p += kl + 1; *p && *p != ' ' && *p != '\n' && i < sizeof val - 1;) val[i++] = *p++;
            val[i] = 0;
            return val;
        }
        if (p[kl] == ' ' || p[kl] == '\n' || p[kl] == 0) return "";
    }
    return NULL;
}

/* With hutch.debug, a failed boot leaves what an operator needs on the console (and so in
 * console.log and the failure reason): the kernel's last words, devices, mounts, ports. */
static const char DIAGNOSE[] =
    "echo '# kernel'; dmesg | tail -n 30; echo '# devices'; ls /dev; "
    "echo '# mounts'; cat /proc/mounts; echo '# virtio ports'; ls /sys/class/virtio-ports";

static void fatal(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    logmsg("fatal: %s", msg);
    if (vm_mode && boot_param("hutch.debug")) {
        pid_t pid = fork();
        if (pid == 0) {
            char *sh[] = {"/bin/busybox", "sh", "-c", (char *)DIAGNOSE, NULL};
            execv(sh[0], sh);
            _exit(127);
        }
        if (pid > 0) waitpid(pid, NULL, 0);
        logmsg("fatal: %s", msg); /* again, last: the failure reason quotes the console's tail */
    }
    power_off();
    exit(1);
}

static void must_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                       const char *data) {
    mkdir(dst, 0755);
    if (mount(src, dst, type, flags, data) < 0)
        fatal("mount %s on %s (%s): %s", src, dst, type, strerror(errno));
}

static void load_modules(void) {
    char list[4096];
    int fd = open("/lib/modules/order", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, list, sizeof list - 1);
    close(fd);
    if (n <= 0) return;
    list[n] = 0;
    for (char *save, *name = strtok_r(list, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
        char path[256];
        snprintf(path, sizeof path, "/lib/modules/%s", name);
        int mfd = open(path, O_RDONLY | O_CLOEXEC);
        if (mfd < 0) fatal("module %s: %s", name, strerror(errno));
        /* ENODEV: an optional accelerated variant (e.g. crc32c-intel without SSE4.2 in TCG) */
        if (syscall(SYS_finit_module, mfd, "", 0) < 0 && errno != EEXIST && errno != ENODEV)
            logmsg("module %s: %s", name, strerror(errno));
        close(mfd);
    }
}

static void wait_for(const char *path) {
    for (int i = 0; i < 10000; i++) {
        if (access(path, F_OK) == 0) return;
        usleep(1000);
    }
    fatal("%s did not appear", path);
}

/* No udev in the guest: the device whose sysfs entry in `dir` (a name starting with `prefix`)
 * has an `attr` file that reads `want`, as /dev/NAME in `dev` once that exists. Polled for about
 * 10 s, as the kernel probes; 0 if it never shows. */
static int find_device(const char *dir, const char *prefix, const char *attr, const char *want,
                       char *dev, size_t size) {
    for (int tries = 0; tries < 10000; tries++) {
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
            char path[300], name[64] = {0};
            snprintf(path, sizeof path, "%s/%s/%s", dir, e->d_name, attr);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n > 0 && name[n - 1] == '\n') name[n - 1] = 0;
            if (strcmp(name, want) != 0) continue;
            snprintf(dev, size, "/dev/%.32s", e->d_name); /* vdX and vportNpM names are short */
            closedir(d);
            wait_for(dev);
            return 1;
        }
        if (d) closedir(d);
        usleep(1000);
    }
    return 0;
}

/* vdX names follow probe order: find a disk by the serial the host gave it (virtio-blk's
 * "serial" attribute). */
static void find_disk(const char *serial, char *dev, size_t size) {
    if (!find_device("/sys/block", "vd", "serial", serial, dev, size))
        fatal("disk %s not found", serial);
}

/* Our virtio port, by its name. */
static void open_port(void) {
    char dev[300];
    if (!find_device("/sys/class/virtio-ports", "", "name", PORT_NAME, dev, sizeof dev))
        fatal("virtio port %s not found", PORT_NAME);
    chan = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (chan < 0) fatal("open %s: %s", dev, strerror(errno));
}

static void make_dev(void) {
    static const struct { const char *name; mode_t mode; int maj, min; } nodes[] = {
        {"null", 0666, 1, 3}, {"zero", 0666, 1, 5}, {"full", 0666, 1, 7},
        {"random", 0666, 1, 8}, {"urandom", 0666, 1, 9}, {"tty", 0666, 5, 0},
    };
    must_mount("tmpfs", "/newroot/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=1m");
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        char path[64];
        snprintf(path, sizeof path, "/newroot/dev/%s", nodes[i].name);
        mknod(path, S_IFCHR | nodes[i].mode, makedev(nodes[i].maj, nodes[i].min));
        chmod(path, nodes[i].mode);
    }
    must_mount("devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=0620");
    symlink("pts/ptmx", "/newroot/dev/ptmx");
    must_mount("shm", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    symlink("/proc/self/fd", "/newroot/dev/fd");
    symlink("/proc/self/fd/0", "/newroot/dev/stdin");
    symlink("/proc/self/fd/1", "/newroot/dev/stdout");
    symlink("/proc/self/fd/2", "/newroot/dev/stderr");
}

/* ---- micro-VM network (hutch.net= on the kernel command line) ------------------------------ */

/* struct in6_ifreq of <linux/ipv6.h>, which clashes with the libc headers */
struct in6_ifreq_ {
    struct in6_addr addr;
    uint32_t prefixlen;
    int ifindex;
};

/* Write `text` to `path` under the new root as a fresh file: an image's symlink there (e.g.
 * resolv.conf -> /run/...) is replaced, never followed out of the guest's root. */

static void net_fail(const char *what, const char *arg) {
    if (!net_redo) fatal("%s %s: %s", what, arg, strerror(errno));
    logmsg("%s %s: %s", what, arg, strerror(errno));
    if (!net_err) net_err = errno ? errno : EIO;
}

static void put_file(const char *path, const char *text) {
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) { net_fail("writing", path); return; }
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len) net_fail("writing", path);
    close(fd);
}

/* EEXIST: a route a clone still has from its snapshot */
static void net_ioctl(int s, unsigned long req, void *arg, const char *what) {
    if (ioctl(s, req, arg) < 0 && !(net_redo && errno == EEXIST)) net_fail("network:", what);
}

/* hutch.net=IP4/P4,GW4,IP6/P6,GW6,MTU (runtime/wiring.py writes it): eth0 gets both addresses,
 * both default routes and the MTU before the workload starts. No DHCP, no router
 * advertisements: the host decided all of it. */
static void net_setup(const char *root) {
    const char *p = boot_param("hutch.net");
    if (!p) return;
    char conf[256], ip4[64], gw4[64], ip6[64], gw6[64];
    int p4, p6, mtu;
    snprintf(conf, sizeof conf, "%s", p);
    for (char *c = conf; *c; c++)
        if (*c == ',' || *c == '/') *c = ' ';
    if (sscanf(conf, "%63s %d %63s %63s %d %63s %d", ip4, &p4, gw4, ip6, &p6, gw6, &mtu) != 7 ||
        p4 < 0 || p4 > 32 || p6 < 0 || p6 > 128 || mtu < 68)
        fatal("hutch.net=%s is malformed", p);
    wait_for("/sys/class/net/eth0");
    write_file("/proc/sys/net/ipv6/conf/eth0/accept_dad", "0"); /* addresses work at once */
    write_file("/proc/sys/net/ipv6/conf/eth0/accept_ra", "0");

    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int s6 = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0 || s6 < 0) fatal("network: socket: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "eth0");
    ifr.ifr_mtu = mtu;
    net_ioctl(s, SIOCSIFMTU, &ifr, "MTU");
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, ip4, &sin->sin_addr) != 1) fatal("hutch.net: bad address %s", ip4);
    net_ioctl(s, SIOCSIFADDR, &ifr, "IPv4 address");
    sin->sin_addr.s_addr = p4 ? htonl(~0u << (32 - p4)) : 0;
    net_ioctl(s, SIOCSIFNETMASK, &ifr, "IPv4 netmask");
    net_ioctl(s, SIOCGIFFLAGS, &ifr, "flags");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    net_ioctl(s, SIOCSIFFLAGS, &ifr, "link up");
    net_ioctl(s, SIOCGIFINDEX, &ifr, "index");
    int ifindex = ifr.ifr_ifindex;

    struct rtentry rt;
    memset(&rt, 0, sizeof rt);
    ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
    ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
    struct sockaddr_in *gw = (struct sockaddr_in *)&rt.rt_gateway;
    gw->sin_family = AF_INET;
    if (inet_pton(AF_INET, gw4, &gw->sin_addr) != 1) fatal("hutch.net: bad gateway %s", gw4);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = ifr.ifr_name;
    net_ioctl(s, SIOCADDRT, &rt, "IPv4 default route");

    struct in6_ifreq_ ifr6;
    memset(&ifr6, 0, sizeof ifr6);
    ifr6.ifindex = ifindex;
    if (net_redo && *net_ip6 && strcmp(net_ip6, ip6) != 0 &&
        inet_pton(AF_INET6, net_ip6, &ifr6.addr) == 1) {
        ifr6.prefixlen = (uint32_t)net_p6;
        net_ioctl(s6, SIOCDIFADDR, &ifr6, "old IPv6 address");
    }
    if (inet_pton(AF_INET6, ip6, &ifr6.addr) != 1) fatal("hutch.net: bad address %s", ip6);
    ifr6.prefixlen = (uint32_t)p6;
    net_ioctl(s6, SIOCSIFADDR, &ifr6, "IPv6 address");
    snprintf(net_ip6, sizeof net_ip6, "%s", ip6);
    net_p6 = p6;
    struct in6_rtmsg rt6;
    memset(&rt6, 0, sizeof rt6);
    if (inet_pton(AF_INET6, gw6, &rt6.rtmsg_gateway) != 1) fatal("hutch.net: bad gateway %s", gw6);
    rt6.rtmsg_flags = RTF_UP | RTF_GATEWAY;
    rt6.rtmsg_metric = 1;
    rt6.rtmsg_ifindex = ifindex;
    net_ioctl(s6, SIOCADDRT, &rt6, "IPv6 default route");
    close(s);
    close(s6);

    /* resolv.conf and hosts on the writable root, before the workload starts */
    char text[1024];
    size_t n = 0;
    const char *v = boot_param("hutch.dns");
    char list[256];
    snprintf(list, sizeof list, "%s", v ? v : "");
    for (char *save, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        n += (size_t)snprintf(text + n, sizeof text - n, "nameserver %s\n", t);
    v = boot_param("hutch.search");
    if (v && *v && n < sizeof text) {
        snprintf(list, sizeof list, "%s", v);
        for (char *c = list; *c; c++)
            if (*c == ',') *c = ' ';
        n += (size_t)snprintf(text + n, sizeof text - n, "search %s\n", list);
    }
    char path[64];
    snprintf(path, sizeof path, "%s/etc", root);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/etc/resolv.conf", root);
    put_file(path, text);
    v = boot_param("hutch.hostname");
    char host[64];
    snprintf(host, sizeof host, "%s", v ? v : "");
    n = (size_t)snprintf(text, sizeof text,
                         "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if (*host) snprintf(text + n, sizeof text - n, "%s\t%s\n%s\t%s\n", ip4, host, ip6, host);
    snprintf(path, sizeof path, "%s/etc/hosts", root);
    put_file(path, text);
}

/* Volume `dev` (its node's stat in `st`) at `target` as the workload will see it: made (mkdir -p)
 * and mounted, or its block device node made there for fs "none", by a child chrooted into
 * /newroot. A symlink of the image on the way then resolves inside the image (an absolute one
 * from the image's root), never onto the initramfs's own tree, where the workload would not see
 * the volume. The mount's source is the disk's node under the new root's /dev (made for it).
 * 0, or the errno of what failed. */
static int place_volume(const char *dev, const struct stat *st, const char *target,
                        const char *fs, unsigned long flags) {
    pid_t pid = fork();
    if (pid < 0) return errno;
    if (pid == 0) {
        char dir[256];
        snprintf(dir, sizeof dir, "%s", target);
        if (chroot("/newroot") < 0 || chdir("/") < 0) _exit(errno & 0xff);
        if (strcmp(fs, "none") == 0) {
            char *slash = strrchr(dir, '/');
            *slash = 0;
            if (*dir && make_dirs(dir) < 0) _exit(errno & 0xff);
            unlink(target);
            if (mknod(target, S_IFBLK | 0660, st->st_rdev) < 0) _exit(errno & 0xff);
            _exit(0);
        }
        if (mknod(dev, S_IFBLK | 0600, st->st_rdev) < 0 && errno != EEXIST) _exit(errno & 0xff);
        if (make_dirs(dir) < 0 || mount(dev, target, fs, flags, NULL) < 0) _exit(errno & 0xff);
        _exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : EIO;
}

/* hutch.vols=<i>:<ro|rw>:<ext4|none>:<target>,... (runtime/volumes.py): disk i (serial
 * hutch-vol-<i>) mounted at target, or for "none" a block device node there, under the new root
 * before the workload starts (place_volume). Targets are absolute, of [A-Za-z0-9_.@+-/] only
 * (the host validated them). Any failure fails the sandbox, naming the volume. */
static void mount_volumes(void) {
    const char *p = boot_param("hutch.vols");
    if (!p || !*p) return;
    char list[sizeof cmdline];
    snprintf(list, sizeof list, "%s", p);
    for (char *save, *e = strtok_r(list, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        int index;
        char mode[4], fs[8], target[256], serial[32], dev[64];
        if (sscanf(e, "%d:%3[a-z]:%7[a-z0-9]:%255s", &index, mode, fs, target) != 4 ||
            target[0] != '/' || index < 0 || index >= MAX_VOLS)
            fatal("hutch.vols: malformed entry %s", e);
        int ro = strcmp(mode, "ro") == 0;
        snprintf(serial, sizeof serial, VOL_SERIAL, index);
        if (!find_device("/sys/block", "vd", "serial", serial, dev, sizeof dev))
            fatal("volume %d (%s): its disk %s did not appear", index, target, serial);
        struct stat st;
        if (stat(dev, &st) < 0) fatal("volume %d: %s: %s", index, dev, strerror(errno));
        unsigned long flags = MS_NOSUID | MS_NODEV | (ro ? MS_RDONLY : 0);
        int err = place_volume(dev, &st, target, fs, flags);
        if (err && strcmp(fs, "none") == 0)
            fatal("volume %d: device node at %s: %s", index, target, strerror(err));
        if (err && ro && err == EROFS) /* ext4 with a journal to replay: it needs write access */
            fatal("volume %d: its ext4 journal needs replaying (the last machine that had it "
                  "read-write was not stopped), which a read-only attachment cannot do: "
                  "attach it read-write once (NAME:%s), then read-only again",
                  index, target);
        if (err)
            fatal("volume %d: mounting it (%s, %s) at %s: %s", index, fs, ro ? "ro" : "rw",
                  target, strerror(err));
        if (strcmp(fs, "none") != 0)
            snprintf(vol_mounts[nvol_mounts++], sizeof vol_mounts[0], "%s", target);
    }
}

static void vm_boot(void) {
    mkdir("/dev", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    must_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    must_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
        if (n > 0) cmdline[n] = 0;
        close(fd);
    }
    load_modules();
    open_port();

    const char *p = boot_param("hutch.rootfstype");
    char fstype[32], root[64], scratch[64], exitdisk[64];
    snprintf(fstype, sizeof fstype, "%s", p && *p ? p : "erofs");
    find_disk(ROOT_SERIAL, root, sizeof root);
    find_disk(SCRATCH_SERIAL, scratch, sizeof scratch);
    find_disk(EXIT_SERIAL, exitdisk, sizeof exitdisk);
    exit_fd = open(exitdisk, O_WRONLY | O_CLOEXEC);
    if (exit_fd < 0) fatal("open %s: %s", exitdisk, strerror(errno));
    must_mount(root, "/mnt/lower", fstype, MS_RDONLY, NULL);
    /* The writable layer is the host's sparse ext4 file, not guest RAM: filling it is ENOSPC,
     * not an OOM kill. noinit_itable: never zero inode tables behind the workload's back (the
     * host made the file system lazily, and every block written fills the sparse file). */
    must_mount(scratch, "/mnt/rw", "ext4", MS_NOSUID | MS_NODEV, "noinit_itable");
    mkdir("/mnt/rw/upper", 0755);
    mkdir("/mnt/rw/work", 0755);
    must_mount("overlay", "/newroot", "overlay", 0,
               "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work");
    must_mount("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    must_mount("sysfs", "/newroot/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
               NULL);
    make_dev();
    mkdir("/newroot/tmp", 01777);
    mkdir("/newroot/run", 0755);
    mount_volumes();
    net_setup("/newroot");
    if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
        chdir("/") < 0)
        fatal("switching to the root disk: %s", strerror(errno));
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--listen-fd") == 0) {
        listen_fd = atoi(argv[2]);
        if (listen_fd < 3 || fcntl(listen_fd, F_GETFD) < 0) {
            logmsg("--listen-fd %s is not an open file descriptor", argv[2]);
            return 2;
        }
        fcntl(listen_fd, F_SETFD, FD_CLOEXEC);
        set_nonblock(listen_fd);
        /* the workload, not the guest agent, is what the OOM killer should pick (best effort:
         * lowering needs CAP_SYS_RESOURCE; without it the workload is still the bigger victim) */
        write_file("/proc/self/oom_score_adj", "-999");
    } else if (argc == 1 && getpid() == 1) {
        vm_mode = 1;
    } else {
        fprintf(stderr, "usage: hutch-agent [--listen-fd N]  (PID 1 of a hutch micro-VM)\n");
        return 2;
    }
    sigset_t mask;
    sigemptyset(&mask);
    int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&mask, sigs[i]);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (vm_mode) vm_boot();
    loopback_up();
    serve();
    return 0;
}
