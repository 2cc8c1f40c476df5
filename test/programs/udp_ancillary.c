// udp_ancillary.c MODE: a datagram queued on a UDP socket that asks for
// what a restart cannot give it again (refused at checkpoint).
//   stamp    bound to 127.0.0.1 with SO_TIMESTAMP: its arrival time
//   pktinfo  bound to the wildcard with IP_PKTINFO: the address it was sent to (127.0.0.7)
// A second socket of the process sends it. Prints "ready"; on SIGUSR1
// receives it and prints "ok" if it carries its ancillary data, else
// "FAIL <what>".
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    int stamp = !strcmp(argv[1], "stamp");
    int r = socket(AF_INET, SOCK_DGRAM, 0), s = socket(AF_INET, SOCK_DGRAM, 0), on = 1;
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = stamp ? htonl(INADDR_LOOPBACK) : htonl(INADDR_ANY);
    if (r < 0 || s < 0 || bind(r, (struct sockaddr *)&a, sizeof a) != 0) return 3;
    if (setsockopt(r, stamp ? SOL_SOCKET : IPPROTO_IP, stamp ? SO_TIMESTAMP : IP_PKTINFO, &on, sizeof on) != 0) return 3;
    socklen_t al = sizeof a;
    getsockname(r, (struct sockaddr *)&a, &al);
    a.sin_addr.s_addr = stamp ? htonl(INADDR_LOOPBACK) : inet_addr("127.0.0.7");
    if (sendto(s, "d", 1, 0, (struct sockaddr *)&a, sizeof a) != 1) return 3;
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    while (!go) pause();
    char got, ctl[256];
    struct msghdr m = { .msg_iov = &(struct iovec){ &got, 1 }, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(r, &m, MSG_DONTWAIT) != 1) { printf("FAIL the datagram is gone\n"); return 1; }
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    if (!cm) { printf("FAIL no ancillary data\n"); return 1; }
    if (!stamp) {
        struct in_pktinfo pi;
        memcpy(&pi, CMSG_DATA(cm), sizeof pi);
        if (cm->cmsg_type != IP_PKTINFO || pi.ipi_addr.s_addr != inet_addr("127.0.0.7")) { printf("FAIL sent to %s\n", inet_ntoa(pi.ipi_addr)); return 1; }
    } else if (cm->cmsg_type != SCM_TIMESTAMP) { printf("FAIL no timestamp\n"); return 1; }
    printf("ok\n");
    return 0;
}
