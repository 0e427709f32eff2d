/* udpprobe: a UDP echo and its client for the network tests (busybox's nc here has no -u),
 * built static by tests/cli/test_cluster_networks.py and copied into its test image.
 *
 *   udpprobe serve PORT         answer every datagram on 0.0.0.0:PORT with "echo " + it, and
 *                               print "got " + it on stdout
 *   udpprobe ask IP PORT TEXT   send TEXT, print the answer; exit 1 if none within 2 s
 *   udpprobe vxlan NODE VNI DMAC SMAC SRC DST PORT TEXT
 *                               what a hostile machine would try: a VXLAN packet to NODE:4789
 *                               carrying an Ethernet frame (DMAC, SMAC) with an IPv4/UDP
 *                               datagram SRC:9999 -> DST:PORT holding TEXT
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char buf[600];
    struct sockaddr_in a = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return 2;
    if (argc == 3 && strcmp(argv[1], "serve") == 0) {
        a.sin_port = htons((unsigned short)atoi(argv[2]));
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0) return 2;
        for (;;) {
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            memcpy(buf, "echo ", 5);
            ssize_t n = recvfrom(fd, buf + 5, sizeof buf - 5, 0, (struct sockaddr *)&peer, &len);
            if (n < 0) continue;
            sendto(fd, buf, (size_t)n + 5, 0, (struct sockaddr *)&peer, len);
            printf("got %.*s\n", (int)n, buf + 5);
            fflush(stdout);
        }
    }
    if (argc == 5 && strcmp(argv[1], "ask") == 0) {
        a.sin_port = htons((unsigned short)atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) return 2;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return 1;
        if (send(fd, argv[4], strlen(argv[4]), 0) < 0) return 1;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 2000) != 1) return 1;
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n < 0) return 1;
        buf[n] = 0;
        printf("%s\n", buf);
        return 0;
    }
    if (argc == 10 && strcmp(argv[1], "vxlan") == 0) {
        unsigned char p[600] = {0}, *eth = p + 8, *ip = eth + 14, *udp = ip + 20;
        size_t text = strlen(argv[9]);
        unsigned vni = (unsigned)atoi(argv[3]);
        unsigned m[6];
        if (text > 400) return 2;
        p[0] = 0x08; /* VXLAN: the VNI is valid */
        p[4] = (unsigned char)(vni >> 16), p[5] = (unsigned char)(vni >> 8), p[6] = (unsigned char)vni;
        for (int k = 0; k < 2; k++) {
            if (sscanf(argv[4 + k], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
                return 2;
            for (int j = 0; j < 6; j++) eth[6 * k + j] = (unsigned char)m[j];
        }
        eth[12] = 0x08, eth[13] = 0x00;
        unsigned short total = (unsigned short)(20 + 8 + text);
        ip[0] = 0x45, ip[2] = (unsigned char)(total >> 8), ip[3] = (unsigned char)total;
        ip[8] = 64, ip[9] = 17;
        if (inet_pton(AF_INET, argv[6], ip + 12) != 1 || inet_pton(AF_INET, argv[7], ip + 16) != 1)
            return 2;
        unsigned long sum = 0;
        for (int j = 0; j < 20; j += 2) sum += (unsigned long)(ip[j] << 8 | ip[j + 1]);
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        ip[10] = (unsigned char)(~sum >> 8), ip[11] = (unsigned char)~sum;
        unsigned short dport = (unsigned short)atoi(argv[8]), ulen = (unsigned short)(8 + text);
        udp[0] = 9999 >> 8, udp[1] = 9999 & 0xff, udp[2] = (unsigned char)(dport >> 8);
        udp[3] = (unsigned char)dport, udp[4] = (unsigned char)(ulen >> 8), udp[5] = (unsigned char)ulen;
        memcpy(udp + 8, argv[9], text); /* UDP checksum 0: none, as IPv4 allows */
        a.sin_port = htons(4789);
        if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) return 2;
        size_t len = (size_t)(udp + 8 + text - p);
        return sendto(fd, p, len, 0, (struct sockaddr *)&a, sizeof a) == (ssize_t)len ? 0 : 1;
    }
    fprintf(stderr, "usage: udpprobe serve PORT | ask IP PORT TEXT | vxlan NODE VNI DMAC SMAC SRC DST PORT TEXT\n");
    return 2;
}
