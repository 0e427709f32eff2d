/* hutch-copy: copy a saved guest's RAM back into its RAM file, in place.
 *
 *   hutch-copy SRC DST
 *
 * Only SRC's data is read and written, at the same offsets (SEEK_DATA/SEEK_HOLE): its holes
 * stay holes in DST, whose size is left as it is (QEMU may map it meanwhile: it reads none of
 * it before the copy is over). Run through hutch-spawn, in the VM's cgroup, which the tmpfs
 * pages it writes are charged to. Unlike `dd conv=sparse`, it neither reads the holes nor
 * fills in the zero pages around data within a block. Exits 1 saying why on stderr. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static char buf[CHUNK];

static int fail(const char *what, const char *path) {
    dprintf(2, "hutch-copy: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        errno = EINVAL;
        return fail("usage:", "hutch-copy SRC DST");
    }
    int in = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (in < 0) return fail("opening", argv[1]);
    int out = open(argv[2], O_WRONLY | O_CLOEXEC);
    if (out < 0) return fail("opening", argv[2]);
    off_t pos = 0;
    for (;;) {
        off_t start = lseek(in, pos, SEEK_DATA);
        if (start < 0) {
            if (errno == ENXIO) return 0; /* nothing but holes from here */
            return fail("reading", argv[1]);
        }
        off_t end = lseek(in, start, SEEK_HOLE);
        if (end < 0) return fail("reading", argv[1]);
        for (off_t off = start; off < end;) {
            size_t want = end - off < CHUNK ? (size_t)(end - off) : CHUNK;
            ssize_t n = pread(in, buf, want, off);
            if (n < 0) return fail("reading", argv[1]);
            if (n == 0) {
                errno = EIO;
                return fail("reading (it shrank)", argv[1]);
            }
            for (ssize_t done = 0; done < n;) {
                ssize_t w = pwrite(out, buf + done, n - done, off + done);
                if (w < 0) return fail("writing", argv[2]);
                done += w;
            }
            off += n;
        }
        pos = end;
    }
}
