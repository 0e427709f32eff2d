/* netprobe: the network benchmark's probe (bench/net.py), built static at set-up and run both
 * inside guests and in host network namespaces, so that every path is measured by the same code.
 *
 *   netprobe serve              sink on :5001 (reads to EOF, answers "<bytes>\n"), echo on :5002
 *                               (one request, one answer, close), control on :5003 (a line
 *                               "send IP BYTES\n": send BYTES to IP:5001, answer the result line)
 *   netprobe send IP BYTES      send BYTES to IP:5001; prints "<bytes> <seconds> <bytes/s>"
 *   netprobe rr IP PORT N       N connect/request/answer/close round trips; prints the sorted
 *                               round trip times in microseconds, one line
 *
 * One process, no fork, no threads: the guest is small and TCG makes fork dear. Timing is
 * CLOCK_MONOTONIC from before connect to the peer's answer, so socket buffers never flatter a
 * figure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SINK_PORT 5001
#define ECHO_PORT 5002
#define CONTROL_PORT 5003
#define CHUNK (64 * 1024)

static char buf[CHUNK];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int listener(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0) return -1;
    return fd;
}

static int dial(const char *ip, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0 || inet_pton(AF_INET, ip, &a.sin_addr) != 1) return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Send `bytes` to ip:5001 and wait for the sink's count: the result line, or "error ...". */
static void send_to(const char *ip, long long bytes, char *out, size_t outlen) {
    double start = now();
    int fd = dial(ip, SINK_PORT);
    long long left = bytes;
    char answer[64] = {0};
    ssize_t r;
    if (fd < 0) {
        snprintf(out, outlen, "error connect %s\n", strerror(errno));
        return;
    }
    while (left > 0) {
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        if (write_all(fd, buf, n) != 0) {
            snprintf(out, outlen, "error write %s\n", strerror(errno));
            close(fd);
            return;
        }
        left -= (long long)n;
    }
    shutdown(fd, SHUT_WR);
    r = read(fd, answer, sizeof answer - 1);
    close(fd);
    if (r <= 0 || atoll(answer) != bytes) {
        snprintf(out, outlen, "error short %s\n", r > 0 ? answer : "(nothing)\n");
        return;
    }
    double took = now() - start;
    snprintf(out, outlen, "%lld %.6f %.0f\n", bytes, took, (double)bytes / took);
}

static void sink(int fd) {
    long long total = 0;
    char answer[32];
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) != 0) {
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) break;
        total += r;
    }
    snprintf(answer, sizeof answer, "%lld\n", total);
    write_all(fd, answer, strlen(answer));
}

static void echo(int fd) {
    char req[512];
    ssize_t r = read(fd, req, sizeof req);
    if (r > 0) write_all(fd, req, (size_t)r);
}

static void control(int fd) {
    char line[128] = {0}, ip[64], out[128];
    long long bytes;
    ssize_t r = read(fd, line, sizeof line - 1);
    if (r > 0 && sscanf(line, "send %63s %lld", ip, &bytes) == 2)
        send_to(ip, bytes, out, sizeof out);
    else
        snprintf(out, sizeof out, "error request\n");
    write_all(fd, out, strlen(out));
}

static int serve(void) {
    int ports[3] = {SINK_PORT, ECHO_PORT, CONTROL_PORT};
    void (*handlers[3])(int) = {sink, echo, control};
    struct pollfd fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i].fd = listener(ports[i]);
        fds[i].events = POLLIN;
        if (fds[i].fd < 0) {
            perror("listen");
            return 1;
        }
    }
    printf("netprobe serving\n");
    fflush(stdout);
    for (;;) {
        if (poll(fds, 3, -1) < 0) continue;
        for (int i = 0; i < 3; i++) {
            if (!(fds[i].revents & POLLIN)) continue;
            int c = accept(fds[i].fd, NULL, NULL), one = 1;
            if (c < 0) continue;
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            handlers[i](c);
            close(c);
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int round_trips(const char *ip, int port, int n) {
    double *rtt = calloc((size_t)n, sizeof *rtt);
    static const char req[] = "ping\n";
    char answer[16];
    if (rtt == NULL) return 1;
    for (int i = 0; i < n; i++) {
        double start = now();
        int fd = dial(ip, port);
        if (fd < 0 || write_all(fd, req, sizeof req - 1) != 0 || read(fd, answer, sizeof answer) <= 0) {
            fprintf(stderr, "round trip %d to %s:%d failed: %s\n", i, ip, port, strerror(errno));
            return 1;
        }
        close(fd);
        rtt[i] = (now() - start) * 1e6;
    }
    qsort(rtt, (size_t)n, sizeof *rtt, cmp);
    for (int i = 0; i < n; i++) printf("%s%.1f", i ? " " : "", rtt[i]);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    char out[128];
    signal(SIGPIPE, SIG_IGN);
    if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
    if (argc == 4 && strcmp(argv[1], "send") == 0) {
        send_to(argv[2], atoll(argv[3]), out, sizeof out);
        fputs(out, stdout);
        return strncmp(out, "error", 5) == 0;
    }
    if (argc == 5 && strcmp(argv[1], "rr") == 0)
        return round_trips(argv[2], atoi(argv[3]), atoi(argv[4]));
    fprintf(stderr, "usage: netprobe serve | send IP BYTES | rr IP PORT N\n");
    return 2;
}
