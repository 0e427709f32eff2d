/* bench/volumes.py's I/O probe, built static at set-up and run inside guests, containers and on
 * the node alike:  volio FILE MIB OPS PASSES
 * FILE is made MIB MiB long with its blocks written (untimed, only if it is not that size yet:
 * each timed write then overwrites blocks that exist, in every run alike). Then, with O_DIRECT
 * (no page cache of the guest, container or node in the way), timed on CLOCK_MONOTONIC:
 *   write  MIB MiB in 1 MiB writes from the start, then fdatasync; PASSES times;
 *   read   the same back in 1 MiB reads, PASSES times;
 *   rand   OPS reads of 4 KiB at random 4 KiB-aligned offsets (the same offsets every run).
 * Prints one line: "volio write_s W read_s R rand_s Q bytes B passes P ops N". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK (1 << 20)
#define PAGE 4096

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void prepare(const char *path, off_t size, const char *buf) {
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size == size)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("open (prepare)");
    for (off_t at = 0; at < size; at += BLOCK)
        if (pwrite(fd, buf, BLOCK, at) != BLOCK)
            die("write (prepare)");
    if (fsync(fd) < 0 || close(fd) < 0)
        die("fsync (prepare)");
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: volio FILE MIB OPS PASSES\n");
        return 2;
    }
    const char *path = argv[1];
    long mib = atol(argv[2]), ops = atol(argv[3]), passes = atol(argv[4]);
    if (mib <= 0 || ops <= 0 || passes <= 0) {
        fprintf(stderr, "volio: MIB, OPS and PASSES must be positive\n");
        return 2;
    }
    off_t size = (off_t)mib * BLOCK;
    char *buf;
    if (posix_memalign((void **)&buf, PAGE, BLOCK) != 0)
        die("posix_memalign");
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < BLOCK; i += 8) { /* incompressible, never zero */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    prepare(path, size, buf);
    int fd = open(path, O_RDWR | O_DIRECT);
    if (fd < 0)
        die("open O_DIRECT");

    double t = now();
    for (long pass = 0; pass < passes; pass++) {
        for (off_t at = 0; at < size; at += BLOCK)
            if (pwrite(fd, buf, BLOCK, at) != BLOCK)
                die("write");
        if (fdatasync(fd) < 0)
            die("fdatasync");
    }
    double write_s = now() - t;

    t = now();
    for (long pass = 0; pass < passes; pass++)
        for (off_t at = 0; at < size; at += BLOCK)
            if (pread(fd, buf, BLOCK, at) != BLOCK)
                die("read");
    double read_s = now() - t;

    uint64_t pages = (uint64_t)size / PAGE, r = 0x2545F4914F6CDD1Dull;
    t = now();
    for (long i = 0; i < ops; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        if (pread(fd, buf, PAGE, (off_t)(r % pages) * PAGE) != PAGE)
            die("random read");
    }
    double rand_s = now() - t;
    close(fd);
    printf("volio write_s %.6f read_s %.6f rand_s %.6f bytes %lld passes %ld ops %ld\n", write_s,
           read_s, rand_s, (long long)size, passes, ops);
    return 0;
}
