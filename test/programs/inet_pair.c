// An IPv6 TCP connection and a UDP pair over ::1 (or 127.0.0.1), both ends in this
// process, with bytes queued in both directions: each TCP end writes a
// numbered byte stream (nonblocking, until the peer's window and its own
// send buffer are full) and neither reads; each UDP end sends numbered
// datagrams that the other has not read. Prints `ready` with the totals
// and waits for a line on the fifo named by argv[1] (or SIGUSR1); then
// reads everything and checks that no byte and no datagram is missing,
// doubled or out of order. Prints `ok` and exits 0, or `FAIL: why`.
// argv[2]: "udp" also makes the UDP pair with datagrams queued before
// `ready`; "udp-after" makes the pair but sends the datagrams only after
// the go (the restored sockets must still be bound and connected). Each
// datagram is checked for its sender's address; then one more request and
// reply go each way. "udp-empty": as "udp", datagram 5 of direction 0
// has no bytes; "udp4": as "udp", over 127.0.0.1. Prints `udp PORT1 PORT2` (the bound, then the
// connected socket's port) before `ready`.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define UDP_COUNT 20
/** With "udp-empty", datagram EMPTY_AT of direction 0 is empty. */
#define EMPTY_AT 5
static int empty;

static void die(const char *what) {
  printf("FAIL: %s: %s\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static unsigned char pat(long i, int dir) { return (unsigned char)((i * 7 + dir * 13 + i / 251) & 0xff); }

/** Write the stream of direction `dir` until the socket takes no more; returns the count. */
static long fill(int fd, int dir) {
  long n = 0;
  unsigned char buf[4096];
  for (;;) {
    for (int i = 0; i < (int)sizeof buf; i++) buf[i] = pat(n + i, dir);
    ssize_t w = write(fd, buf, sizeof buf);
    if (w < 0) {
      if (errno == EAGAIN) return n;
      die("write");
    }
    n += w;
  }
}

/** Read exactly `total` bytes of direction `dir`, checking each. */
static void drain(int fd, long total, int dir) {
  long n = 0;
  unsigned char buf[4096];
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  while (n < total) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) die("read");
    if (r == 0) {
      printf("FAIL: direction %d: end of stream after %ld of %ld bytes\n", dir, n, total);
      exit(1);
    }
    for (ssize_t i = 0; i < r; i++) {
      if (buf[i] != pat(n + i, dir)) {
        printf("FAIL: direction %d: byte %ld is wrong\n", dir, n + i);
        exit(1);
      }
    }
    n += r;
  }
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  if (read(fd, buf, 1) >= 0 || errno != EAGAIN) {
    printf("FAIL: direction %d: more than %ld bytes\n", dir, total);
    exit(1);
  }
}

/** With "udp4", the UDP pair is IPv4 (its addresses kept in sockaddr_in6 space; the port is at the same offset). */
static int v4;
static socklen_t alen(void) { return v4 ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6); }

static int same_addr(struct sockaddr_in6 *a, struct sockaddr_in6 *b) {
  if (a->sin6_port != b->sin6_port) return 0;
  if (v4) return ((struct sockaddr_in *)a)->sin_addr.s_addr == ((struct sockaddr_in *)b)->sin_addr.s_addr;
  return !memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr);
}

static int udp_socket(struct sockaddr_in6 *addr) {
  int s = socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0);
  if (s < 0) die("socket udp");
  memset(addr, 0, sizeof *addr);
  if (v4) {
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    a4->sin_family = AF_INET;
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else {
    addr->sin6_family = AF_INET6;
    addr->sin6_addr = in6addr_loopback;
  }
  if (bind(s, (struct sockaddr *)addr, alen())) die("bind udp");
  socklen_t len = alen();
  getsockname(s, (struct sockaddr *)addr, &len);
  return s;
}

/** Read `count` datagrams of direction `dir`, each from `from`, then no more. */
static void udp_check(int s, int dir, int count, struct sockaddr_in6 *from) {
  char buf[64], want[64];
  for (int i = 0; i < count; i++) {
    struct sockaddr_in6 src;
    socklen_t slen = sizeof src;
    ssize_t r = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&src, &slen);
    if (r < 0) { printf("FAIL: udp %d: datagram %d missing: %s\n", dir, i, strerror(errno)); exit(1); }
    if (!same_addr(&src, from)) {
      printf("FAIL: udp %d: datagram %d from port %d, not %d\n", dir, i, ntohs(src.sin6_port), ntohs(from->sin6_port));
      exit(1);
    }
    buf[r] = 0;
    snprintf(want, sizeof want, "datagram %d of %d", i, dir);
    if (empty && i == EMPTY_AT && dir == 0) want[0] = 0;
    if (strcmp(buf, want)) { printf("FAIL: udp %d: got '%s', want '%s'\n", dir, buf, want); exit(1); }
  }
  if (recv(s, buf, sizeof buf, 0) >= 0 || errno != EAGAIN) { printf("FAIL: udp %d: more than %d datagrams\n", dir, count); exit(1); }
}

static void send_datagrams(int u1, int u2, struct sockaddr_in6 *ub) {
  char msg[64];
  for (int i = 0; i < UDP_COUNT; i++) {
    snprintf(msg, sizeof msg, "datagram %d of %d", i, 0);
    if (empty && i == EMPTY_AT) msg[0] = 0;
    if (send(u2, msg, strlen(msg), 0) < 0) die("send udp");
    snprintf(msg, sizeof msg, "datagram %d of %d", i, 1);
    if (sendto(u1, msg, strlen(msg), 0, (struct sockaddr *)ub, alen()) < 0) die("sendto udp");
  }
}

int main(int argc, char **argv) {
  int after = argc > 2 && !strcmp(argv[2], "udp-after");
  empty = argc > 2 && !strcmp(argv[2], "udp-empty");
  v4 = argc > 2 && !strcmp(argv[2], "udp4");
  int udp = after || empty || v4 || (argc > 2 && !strcmp(argv[2], "udp"));
  struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
  int l = socket(AF_INET6, SOCK_STREAM, 0);
  if (l < 0) die("socket");
  int one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l, (struct sockaddr *)&a, sizeof a)) die("bind");
  if (listen(l, 4)) die("listen");
  socklen_t len = sizeof a;
  getsockname(l, (struct sockaddr *)&a, &len);
  int c = socket(AF_INET6, SOCK_STREAM, 0);
  if (connect(c, (struct sockaddr *)&a, sizeof a)) die("connect");
  int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
  if (s < 0) die("accept");
  fcntl(c, F_SETFL, O_NONBLOCK);
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  long toServer = fill(c, 0), toClient = fill(s, 1);
  // UDP: two bound sockets, one connected to the other, datagrams waiting on both.
  struct sockaddr_in6 ua, ub;
  int u1 = -1, u2 = -1;
  if (udp) {
    u1 = udp_socket(&ua);
    u2 = udp_socket(&ub);
    if (connect(u2, (struct sockaddr *)&ua, alen())) die("connect udp");
  }
  if (udp && !after) send_datagrams(u1, u2, &ub);
  if (udp) printf("udp %d %d\n", ntohs(ua.sin6_port), ntohs(ub.sin6_port));
  printf("ready %ld %ld\n", toServer, toClient);
  fflush(stdout);
  // Wait for the go: a line on the fifo.
  int go = open(argv[1], O_RDONLY);
  if (go < 0) die("open fifo");
  char b;
  if (read(go, &b, 1) != 1) die("read fifo");
  if (after) send_datagrams(u1, u2, &ub);
  drain(s, toServer, 0);
  drain(c, toClient, 1);
  if (udp) {
    udp_check(u1, 0, UDP_COUNT, &ub);
    udp_check(u2, 1, UDP_COUNT, &ua);
    // The exchange carries on: a request and its reply.
    char msg[64];
    snprintf(msg, sizeof msg, "datagram %d of %d", 0, 0);
    if (send(u2, msg, strlen(msg), 0) < 0) die("send udp request");
    udp_check(u1, 0, 1, &ub);
    snprintf(msg, sizeof msg, "datagram %d of %d", 0, 1);
    if (sendto(u1, msg, strlen(msg), 0, (struct sockaddr *)&ub, alen()) < 0) die("sendto udp reply");
    udp_check(u2, 1, 1, &ua);
  }
  printf("ok\n");
  return 0;
}
