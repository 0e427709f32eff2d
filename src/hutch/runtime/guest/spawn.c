/* hutch-spawn: join cgroups, then become the program to run. The node agent starts QEMU (and
 * the copy of a suspended guest's RAM back) through it: a fork of the agent's large process to
 * run that setup in Python costs tens of milliseconds; vfork and exec of this costs well under
 * one.
 *
 *   hutch-spawn [--no-thp] PROCS_FILE... -- PROGRAM [ARG]...
 *
 * This process's pid goes into each PROCS_FILE (a cgroup's cgroup.procs) before the exec, so
 * every byte the program allocates is charged to them; --no-thp: no transparent huge pages
 * (PR_SET_THP_DISABLE, kept across exec). Any step that fails ends it with 127, saying why on
 * stderr; the program is then never run. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int fail(const char *what, const char *arg) {
    dprintf(2, "hutch-spawn: %s %s: %s\n", what, arg, strerror(errno));
    return 127;
}

int main(int argc, char **argv) {
    char pid[24];
    int len = snprintf(pid, sizeof pid, "%d", (int)getpid());
    int i = 1;
    if (i < argc && strcmp(argv[i], "--no-thp") == 0) {
        if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0) return fail("disabling", "huge pages");
        i++;
    }
    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0) return fail("opening", argv[i]);
        if (write(fd, pid, len) != len) return fail("joining", argv[i]);
        close(fd);
    }
    if (i + 1 >= argc) {
        errno = EINVAL;
        return fail("no program", "after --");
    }
    execvp(argv[i + 1], argv + i + 1);
    return fail("running", argv[i + 1]);
}
