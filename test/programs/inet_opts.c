// Sockets with many options set to values other than a fresh socket's: a
// TCP listener (IPv4), a TCP connection (IPv6, both ends here), a UDP
// socket of each family. Prints `ready` and waits for a byte on the fifo
// argv[1]; then reads every option back and compares it with what it set.
// Prints `ok` and exits 0, or `FAIL: which option`.
// argv[2] names state that stasis refuses instead (the program then only
// checks that its sockets still work): "mcast" joins a multicast group,
// "md5" gives the listener a TCP MD5 key, "tsid" asks for timestamps with
// SOF_TIMESTAMPING_OPT_ID, "ipopts" sets IP_OPTIONS.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/net_tstamp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void die(const char *what) {
  printf("FAIL: %s: %s\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

struct opt { int *fd; int level, name, value; const char *what; };

static int lst, cli, srv, u4, u6;

// Each int option, on which socket, and its value.
static struct opt OPTS[] = {
  { &lst, IPPROTO_TCP, TCP_SYNCNT, 3, "TCP_SYNCNT" },
  { &lst, IPPROTO_TCP, TCP_WINDOW_CLAMP, 40000, "TCP_WINDOW_CLAMP" },
  { &lst, IPPROTO_TCP, TCP_FASTOPEN, 16, "TCP_FASTOPEN" },
  { &lst, IPPROTO_TCP, TCP_DEFER_ACCEPT, 5, "TCP_DEFER_ACCEPT" },
  { &lst, IPPROTO_TCP, TCP_MAXSEG, 1200, "TCP_MAXSEG" },
  { &lst, IPPROTO_TCP, TCP_LINGER2, 17, "TCP_LINGER2" },
  { &lst, IPPROTO_TCP, TCP_NOTSENT_LOWAT, 65536, "TCP_NOTSENT_LOWAT" },
  { &lst, IPPROTO_IP, IP_TTL, 33, "IP_TTL" },
  { &lst, IPPROTO_IP, IP_TOS, 0x10, "IP_TOS" },
  // after IP_TOS, which sets the priority too
  { &lst, SOL_SOCKET, SO_PRIORITY, 5, "SO_PRIORITY" },
  { &cli, IPPROTO_TCP, TCP_NOTSENT_LOWAT, 4096, "TCP_NOTSENT_LOWAT (connection)" },
  { &cli, IPPROTO_TCP, TCP_SYNCNT, 2, "TCP_SYNCNT (connection)" },
  { &cli, IPPROTO_TCP, TCP_INQ, 1, "TCP_INQ" },
  { &cli, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS" },
  { &cli, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS" },
  { &srv, SOL_SOCKET, SO_TIMESTAMPNS, 1, "SO_TIMESTAMPNS" },
  { &u4, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO" },
  { &u4, IPPROTO_IP, IP_RECVTTL, 1, "IP_RECVTTL" },
  { &u4, IPPROTO_IP, IP_RECVTOS, 1, "IP_RECVTOS" },
  { &u4, IPPROTO_IP, IP_RECVERR, 1, "IP_RECVERR" },
  { &u4, IPPROTO_IP, IP_MULTICAST_TTL, 7, "IP_MULTICAST_TTL" },
  { &u4, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "IP_MULTICAST_LOOP" },
  { &u4, IPPROTO_IP, IP_MULTICAST_ALL, 0, "IP_MULTICAST_ALL" },
  { &u4, IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO, "IP_MTU_DISCOVER" },
  { &u4, SOL_SOCKET, SO_TIMESTAMP, 1, "SO_TIMESTAMP" },
  { &u4, SOL_SOCKET, SO_RXQ_OVFL, 1, "SO_RXQ_OVFL" },
  { &u4, SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE, "SO_TIMESTAMPING" },
  { &u4, SOL_UDP, UDP_GRO, 1, "UDP_GRO" },
  { &u4, SOL_UDP, UDP_SEGMENT, 1000, "UDP_SEGMENT" },
  { &u6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO" },
  { &u6, IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1, "IPV6_RECVHOPLIMIT" },
  { &u6, IPPROTO_IPV6, IPV6_RECVTCLASS, 1, "IPV6_RECVTCLASS" },
  { &u6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 5, "IPV6_MULTICAST_HOPS" },
  { &u6, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, 0, "IPV6_MULTICAST_LOOP" },
  { &u6, IPPROTO_IPV6, IPV6_MULTICAST_IF, 1, "IPV6_MULTICAST_IF" },
  { &u6, IPPROTO_IPV6, IPV6_RECVERR, 1, "IPV6_RECVERR" },
  { &u6, IPPROTO_IPV6, IPV6_DONTFRAG, 1, "IPV6_DONTFRAG" },
  { &u6, IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO (IPv6 socket)" },
};
#define NOPTS (sizeof OPTS / sizeof OPTS[0])

static void set_all(void) {
  for (unsigned i = 0; i < NOPTS; i++)
    if (setsockopt(*OPTS[i].fd, OPTS[i].level, OPTS[i].name, &OPTS[i].value, sizeof(int))) die(OPTS[i].what);
  // Whole jiffies (HZ 250 or 1000): they read back as set.
  struct timeval rcv = { 3, 248000 }, snd = { 0, 8000 };
  if (setsockopt(srv, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv)) die("SO_RCVTIMEO");
  if (setsockopt(u6, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd)) die("SO_SNDTIMEO");
  if (setsockopt(lst, IPPROTO_TCP, TCP_CONGESTION, "reno", 4)) die("TCP_CONGESTION");
  if (setsockopt(cli, IPPROTO_TCP, TCP_CONGESTION, "cubic", 5)) die("TCP_CONGESTION (connection)");
  struct in_addr lo = { htonl(INADDR_LOOPBACK) };
  if (setsockopt(u4, IPPROTO_IP, IP_MULTICAST_IF, &lo, sizeof lo)) die("IP_MULTICAST_IF");
}

static int get(int fd, int level, int name, const char *what) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(fd, level, name, &v, &len)) die(what);
  return v;
}

// What each option read right after it was set (the kernel rounds some values).
static int before[NOPTS];

/** Each option reads as it did before, and that differs from a fresh socket's value. */
static void note_all(void) {
  for (unsigned i = 0; i < NOPTS; i++) {
    before[i] = get(*OPTS[i].fd, OPTS[i].level, OPTS[i].name, OPTS[i].what);
    int domain = 0, type = 0;
    socklen_t len = sizeof domain;
    getsockopt(*OPTS[i].fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
    len = sizeof type;
    getsockopt(*OPTS[i].fd, SOL_SOCKET, SO_TYPE, &type, &len);
    int fresh = socket(domain, type, 0);
    if (get(fresh, OPTS[i].level, OPTS[i].name, OPTS[i].what) == before[i]) { printf("FAIL: %s reads %d, as on a fresh socket\n", OPTS[i].what, before[i]); exit(1); }
    close(fresh);
  }
}

static void check_all(void) {
  for (unsigned i = 0; i < NOPTS; i++) {
    int v = get(*OPTS[i].fd, OPTS[i].level, OPTS[i].name, OPTS[i].what);
    if (v != before[i]) { printf("FAIL: %s is %d, not %d\n", OPTS[i].what, v, before[i]); exit(1); }
  }
  struct timeval tv;
  socklen_t len = sizeof tv;
  if (getsockopt(srv, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) || tv.tv_sec != 3 || tv.tv_usec != 248000) { printf("FAIL: SO_RCVTIMEO is %ld.%06ld\n", (long)tv.tv_sec, (long)tv.tv_usec); exit(1); }
  len = sizeof tv;
  if (getsockopt(u6, SOL_SOCKET, SO_SNDTIMEO, &tv, &len) || tv.tv_sec != 0 || tv.tv_usec != 8000) { printf("FAIL: SO_SNDTIMEO is %ld.%06ld\n", (long)tv.tv_sec, (long)tv.tv_usec); exit(1); }
  char cc[16] = { 0 };
  len = sizeof cc;
  if (getsockopt(lst, IPPROTO_TCP, TCP_CONGESTION, cc, &len) || strcmp(cc, "reno")) { printf("FAIL: TCP_CONGESTION is %s\n", cc); exit(1); }
  memset(cc, 0, sizeof cc);
  len = sizeof cc;
  if (getsockopt(cli, IPPROTO_TCP, TCP_CONGESTION, cc, &len) || strcmp(cc, "cubic")) { printf("FAIL: TCP_CONGESTION (connection) is %s\n", cc); exit(1); }
  struct in_addr a;
  len = sizeof a;
  if (getsockopt(u4, IPPROTO_IP, IP_MULTICAST_IF, &a, &len) || a.s_addr != htonl(INADDR_LOOPBACK)) { printf("FAIL: IP_MULTICAST_IF\n"); exit(1); }
}

/** The sockets still work: the connection carries a byte each way, UDP sends to itself. */
static void check_working(void) {
  char b = 'x';
  if (write(cli, &b, 1) != 1 || read(srv, &b, 1) != 1 || write(srv, &b, 1) != 1 || read(cli, &b, 1) != 1) die("the connection");
  struct sockaddr_in me;
  socklen_t len = sizeof me;
  getsockname(u4, (struct sockaddr *)&me, &len);
  if (sendto(u4, "d", 1, 0, (struct sockaddr *)&me, len) != 1 || recv(u4, &b, 1, 0) != 1) die("udp");
}

int main(int argc, char **argv) {
  const char *refuse = argc > 2 ? argv[2] : "";
  struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_addr = { htonl(INADDR_LOOPBACK) } };
  struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
  lst = socket(AF_INET, SOCK_STREAM, 0);
  if (lst < 0 || bind(lst, (struct sockaddr *)&a4, sizeof a4) || listen(lst, 8)) die("listener");
  int l6 = socket(AF_INET6, SOCK_STREAM, 0);
  if (l6 < 0 || bind(l6, (struct sockaddr *)&a6, sizeof a6) || listen(l6, 1)) die("listener6");
  socklen_t len = sizeof a6;
  getsockname(l6, (struct sockaddr *)&a6, &len);
  cli = socket(AF_INET6, SOCK_STREAM, 0);
  if (cli < 0 || connect(cli, (struct sockaddr *)&a6, sizeof a6)) die("connect");
  srv = accept(l6, NULL, NULL);
  if (srv < 0) die("accept");
  close(l6);
  u4 = socket(AF_INET, SOCK_DGRAM, 0);
  if (u4 < 0 || bind(u4, (struct sockaddr *)&a4, sizeof a4)) die("udp4");
  u6 = socket(AF_INET6, SOCK_DGRAM, 0);
  if (u6 < 0) die("udp6");
  set_all();
  note_all();
  if (!strcmp(refuse, "mcast")) {
    struct ip_mreqn m = { .imr_multiaddr = { inet_addr("239.7.7.7") }, .imr_ifindex = if_nametoindex("lo") };
    if (setsockopt(u4, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m)) die("IP_ADD_MEMBERSHIP");
  } else if (!strcmp(refuse, "mcast6")) {
    struct ipv6_mreq m = { .ipv6mr_interface = if_nametoindex("lo") };
    inet_pton(AF_INET6, "ff15::7", &m.ipv6mr_multiaddr);
    if (setsockopt(u6, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &m, sizeof m)) die("IPV6_ADD_MEMBERSHIP");
  } else if (!strcmp(refuse, "md5")) {
    struct tcp_md5sig k = { .tcpm_keylen = 6 };
    struct sockaddr_in *p = (struct sockaddr_in *)&k.tcpm_addr;
    p->sin_family = AF_INET;
    p->sin_addr.s_addr = inet_addr("127.0.0.2");
    memcpy(k.tcpm_key, "secret", 6);
    if (setsockopt(lst, IPPROTO_TCP, TCP_MD5SIG, &k, sizeof k)) die("TCP_MD5SIG");
  } else if (!strcmp(refuse, "tsid")) {
    int f = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID;
    if (setsockopt(u6, SOL_SOCKET, SO_TIMESTAMPING, &f, sizeof f)) die("SO_TIMESTAMPING");
  } else if (!strcmp(refuse, "ipopts")) {
    unsigned char nop[4] = { 1, 1, 1, 0 };
    if (setsockopt(u4, IPPROTO_IP, IP_OPTIONS, nop, sizeof nop)) die("IP_OPTIONS");
  }
  printf("ready\n");
  fflush(stdout);
  int go = open(argv[1], O_RDONLY);
  char b;
  if (go < 0 || read(go, &b, 1) != 1) die("fifo");
  if (!*refuse) check_all();
  check_working();
  printf("ok\n");
  return 0;
}
