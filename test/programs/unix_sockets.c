// Unix sockets as a checkpoint target, by mode. Each mode sets up its
// sockets, prints "ready", waits for SIGUSR1 and then checks, from inside,
// that everything is as it set it up: the bytes and messages queued in
// both directions (message boundaries), names, peers, shutdown state and
// options; it prints "ok", or one "FAIL <what>" line per difference.
//   pairs             socketpairs of each type with data both ways, shutdown, options
//   listen DIR        listening sockets at DIR/srv and an abstract name, an accepted
//                     connection with data both ways, named datagram sockets
//   pending DIR       a listening socket with a connection not yet accepted (refused)
//   rights            a socketpair with an fd in flight (SCM_RIGHTS, refused)
//   stamped           a datagram queued on a socket with SO_TIMESTAMP (refused)
//   serve DIR         a listening socket at DIR/srv; accepts one connection, then waits
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static int failures;
static void fail(const char *fmt, ...)
{
    va_list ap;
    char line[256];
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    printf("FAIL %s\n", line);
    failures++;
}
#define MUST(call) do { if ((call) < 0) { printf("setup failed: %s: %s\n", #call, strerror(errno)); exit(2); } } while (0)

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

static socklen_t addr_of(struct sockaddr_un *a, const char *path, int abstract)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    if (abstract) {
        a->sun_path[0] = 0;
        memcpy(a->sun_path + 1, path, strlen(path));
        return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(path);
    }
    strcpy(a->sun_path, path);
    return offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1;
}

static int sock_at(int type, const char *path, int abstract)
{
    int s;
    MUST(s = socket(AF_UNIX, type, 0));
    struct sockaddr_un a;
    socklen_t l = addr_of(&a, path, abstract);
    MUST(bind(s, (struct sockaddr *)&a, l));
    return s;
}

static int connect_to(int type, const char *path, int abstract)
{
    int s;
    MUST(s = socket(AF_UNIX, type, 0));
    struct sockaddr_un a;
    socklen_t l = addr_of(&a, path, abstract);
    MUST(connect(s, (struct sockaddr *)&a, l));
    return s;
}

/** Read one message (or what a stream has) without waiting; it must be `want`. */
static void expect_msg(int fd, const char *what, const char *want, size_t len)
{
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) { fail("%s: recv: %s", what, strerror(errno)); return; }
    if ((size_t)n != len || memcmp(buf, want, len)) fail("%s: got %zd bytes \"%.*s\", expected \"%.*s\"", what, n, (int)(n > 0 ? n : 0), buf, (int)len, want);
}

static void expect_empty(int fd, const char *what)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    if (!(n < 0 && errno == EAGAIN)) fail("%s: expected nothing more, recv gave %zd (%s)", what, n, n < 0 ? strerror(errno) : "data");
}

static int getint(int fd, int opt)
{
    int v = -12345;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, opt, &v, &l) < 0) fail("getsockopt %d: %s", opt, strerror(errno));
    return v;
}

static void wait_go(void)
{
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    printf("ready\n");
    while (!go) sigsuspend(&old);
}

static void expect_name(int fd, int peer, const char *what, const char *path, int abstract)
{
    struct sockaddr_un a, want;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if ((peer ? getpeername(fd, (struct sockaddr *)&a, &l) : getsockname(fd, (struct sockaddr *)&a, &l)) < 0) { fail("%s: %s", what, strerror(errno)); return; }
    socklen_t wl = addr_of(&want, path, abstract);
    if (!path[0]) wl = offsetof(struct sockaddr_un, sun_path);
    if (l != wl || memcmp(&a, &want, l)) fail("%s: name of %u bytes is not the expected one (%u bytes, %s)", what, l, wl, path);
}

static int mode_pairs(void)
{
    int st[2], dg[2], sp[2], sh[2];
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
    MUST(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp));
    MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, sh));
    // Bytes both ways on the stream pair, in several writes.
    MUST(send(st[0], "hello ", 6, 0));
    MUST(send(st[0], "world", 5, 0));
    MUST(send(st[1], "back", 4, 0));
    // Messages both ways, one empty.
    MUST(send(dg[0], "one", 3, 0));
    MUST(send(dg[0], "", 0, 0));
    MUST(send(dg[0], "three!", 6, 0));
    MUST(send(dg[1], "reply", 5, 0));
    MUST(send(sp[0], "alpha", 5, 0));
    MUST(send(sp[0], "beta", 4, 0));
    MUST(send(sp[1], "gamma", 5, 0));
    // Shut down: sh[0] may not send, sh[1] reads its queued bytes, then EOF.
    MUST(send(sh[0], "last", 4, 0));
    MUST(shutdown(sh[0], SHUT_WR));
    // Options.
    int one = 1, rcv = 65536, snd = 32768, low = 3, off = 2;
    MUST(setsockopt(sh[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one));
    MUST(setsockopt(st[1], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv));
    MUST(setsockopt(dg[0], SOL_SOCKET, SO_SNDBUF, &snd, sizeof snd));
    MUST(setsockopt(st[1], SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low));
    MUST(setsockopt(st[1], SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off));
    // On a socket with nothing queued: queued messages would carry their times (refused).
    MUST(setsockopt(sh[0], SOL_SOCKET, SO_TIMESTAMP, &one, sizeof one));
    struct timeval tv = { 7, 500 };
    MUST(setsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    MUST(fcntl(dg[1], F_SETFL, O_NONBLOCK));
    int rcvWas = getint(st[1], SO_RCVBUF), sndWas = getint(dg[0], SO_SNDBUF);
    struct timeval tvWas; // as the kernel keeps it (in ticks)
    socklen_t tl = sizeof tvWas;
    MUST(getsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &tvWas, &tl));
    wait_go();

    if (getint(sh[0], SO_PASSCRED) != 1) fail("SO_PASSCRED");
    if (getint(st[1], SO_RCVBUF) != rcvWas) fail("SO_RCVBUF %d, expected %d", getint(st[1], SO_RCVBUF), rcvWas);
    if (getint(dg[0], SO_SNDBUF) != sndWas) fail("SO_SNDBUF %d, expected %d", getint(dg[0], SO_SNDBUF), sndWas);
    if (getint(st[1], SO_RCVLOWAT) != 3) fail("SO_RCVLOWAT");
    if (getint(st[1], SO_PEEK_OFF) != 2) fail("SO_PEEK_OFF %d", getint(st[1], SO_PEEK_OFF));
    if (getint(sh[0], SO_TIMESTAMP) != 1) fail("SO_TIMESTAMP");
    struct timeval got;
    socklen_t l = sizeof got;
    MUST(getsockopt(sp[1], SOL_SOCKET, SO_RCVTIMEO, &got, &l));
    if (got.tv_sec != tvWas.tv_sec || got.tv_usec != tvWas.tv_usec) fail("SO_RCVTIMEO %ld.%06ld", (long)got.tv_sec, (long)got.tv_usec);
    if (!(fcntl(dg[1], F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK");
    if (fcntl(dg[0], F_GETFL) & O_NONBLOCK) fail("O_NONBLOCK on dg[0]");
    // Peek offset 2: a peek starts 2 bytes in; then reads take everything.
    char pk[16];
    ssize_t n = recv(st[1], pk, sizeof pk, MSG_PEEK | MSG_DONTWAIT);
    if (n != 9 || memcmp(pk, "llo world", 9)) fail("peek from offset 2: %zd \"%.*s\"", n, (int)(n > 0 ? n : 0), pk);
    int zero = -1;
    MUST(setsockopt(st[1], SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero));
    expect_msg(st[1], "stream a->b", "hello world", 11);
    expect_empty(st[1], "stream a->b");
    expect_msg(st[0], "stream b->a", "back", 4);
    expect_empty(st[0], "stream b->a");
    expect_msg(dg[1], "dgram 1", "one", 3);
    expect_msg(dg[1], "dgram 2 (empty)", "", 0);
    expect_msg(dg[1], "dgram 3", "three!", 6);
    expect_empty(dg[1], "dgram a->b");
    expect_msg(dg[0], "dgram reply", "reply", 5);
    expect_empty(dg[0], "dgram b->a");
    expect_msg(sp[1], "seqpacket 1", "alpha", 5);
    expect_msg(sp[1], "seqpacket 2", "beta", 4);
    expect_empty(sp[1], "seqpacket a->b");
    expect_msg(sp[0], "seqpacket reply", "gamma", 5);
    // Shutdown: bytes, then end of file; the shut side may not send.
    expect_msg(sh[1], "before shutdown", "last", 4);
    char c;
    if (recv(sh[1], &c, 1, MSG_DONTWAIT) != 0) fail("no end of file after shutdown");
    signal(SIGPIPE, SIG_IGN);
    if (!(send(sh[0], "x", 1, 0) < 0 && errno == EPIPE)) fail("send after SHUT_WR did not fail with EPIPE");
    if (send(sh[1], "y", 1, 0) != 1) fail("the other way is still open: %s", strerror(errno));
    expect_msg(sh[0], "after shutdown, other way", "y", 1);
    // Still connected to each other.
    MUST(send(st[0], "again", 5, 0));
    expect_msg(st[1], "stream after restart", "again", 5);
    MUST(send(dg[1], "more", 4, 0));
    expect_msg(dg[0], "dgram after restart", "more", 4);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

static int mode_listen(const char *dir)
{
    char srv[256], dsrv[256], dcli[256];
    snprintf(srv, sizeof srv, "%s/srv", dir);
    snprintf(dsrv, sizeof dsrv, "%s/dsrv", dir);
    snprintf(dcli, sizeof dcli, "%s/dcli", dir);
    int l = sock_at(SOCK_STREAM, srv, 0);
    MUST(chmod(srv, 0640));
    MUST(listen(l, 7));
    int la = sock_at(SOCK_SEQPACKET, "stasis-test-abstract", 1);
    MUST(listen(la, 3));
    int c = connect_to(SOCK_STREAM, srv, 0);
    int a;
    MUST(a = accept(l, NULL, NULL));
    MUST(send(c, "request", 7, 0));
    MUST(send(a, "response", 8, 0));
    int ca = connect_to(SOCK_SEQPACKET, "stasis-test-abstract", 1);
    int aa;
    MUST(aa = accept(la, NULL, NULL));
    MUST(send(ca, "m1", 2, 0));
    MUST(send(ca, "m2", 2, 0));
    // Named datagram sockets: dcli sends to dsrv and is connected to it; an unnamed one sends too.
    int ds = sock_at(SOCK_DGRAM, dsrv, 0);
    int dc = sock_at(SOCK_DGRAM, dcli, 0);
    struct sockaddr_un to;
    socklen_t tl = addr_of(&to, dsrv, 0);
    MUST(connect(dc, (struct sockaddr *)&to, tl));
    MUST(send(dc, "from-cli", 8, 0));
    int anon;
    MUST(anon = socket(AF_UNIX, SOCK_DGRAM, 0));
    MUST(sendto(anon, "from-anon", 9, 0, (struct sockaddr *)&to, tl));
    MUST(close(anon));
    struct stat before;
    MUST(stat(srv, &before));
    wait_go();

    struct stat now;
    if (stat(srv, &now) < 0 || !S_ISSOCK(now.st_mode)) fail("%s is not a socket", srv);
    else if ((now.st_mode & 07777) != (before.st_mode & 07777) || now.st_uid != before.st_uid) fail("socket file mode %o, expected %o", now.st_mode & 07777, before.st_mode & 07777);
    expect_name(l, 0, "listener name", srv, 0);
    expect_name(a, 0, "accepted name", srv, 0);
    expect_name(c, 1, "client's peer", srv, 0);
    expect_name(c, 0, "client name", "", 0);
    expect_name(aa, 0, "abstract accepted name", "stasis-test-abstract", 1);
    expect_msg(a, "request", "request", 7);
    expect_msg(c, "response", "response", 8);
    expect_msg(aa, "m1", "m1", 2);
    expect_msg(aa, "m2", "m2", 2);
    expect_empty(aa, "seqpacket");
    int backlog = -1;
    socklen_t bl = sizeof backlog;
    if (getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &backlog, &bl) < 0 || backlog != 1) fail("listener not listening");
    // Datagrams with their senders' names.
    char buf[64];
    struct sockaddr_un from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(ds, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    if (n != 8 || memcmp(buf, "from-cli", 8) || fl != addr_of(&to, dcli, 0) || strcmp(from.sun_path, dcli)) fail("datagram from dcli: %zd bytes, from %s", n, fl > 2 ? from.sun_path : "(none)");
    fl = sizeof from;
    n = recvfrom(ds, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    if (n != 9 || memcmp(buf, "from-anon", 9) || fl > offsetof(struct sockaddr_un, sun_path)) fail("datagram from an unnamed socket: %zd bytes, name of %u bytes", n, fl);
    expect_empty(ds, "dgram server");
    expect_name(dc, 1, "datagram client's peer", dsrv, 0);
    MUST(send(dc, "again", 5, 0));
    expect_msg(ds, "datagram after restart", "again", 5);
    // New connections to the same names.
    int c2 = connect_to(SOCK_STREAM, srv, 0);
    int a2;
    if ((a2 = accept(l, NULL, NULL)) < 0) fail("accept after restart: %s", strerror(errno));
    else {
        MUST(send(c2, "new", 3, 0));
        expect_msg(a2, "new connection", "new", 3);
    }
    int c3 = connect_to(SOCK_SEQPACKET, "stasis-test-abstract", 1);
    int a3;
    if ((a3 = accept(la, NULL, NULL)) < 0) fail("accept on the abstract name after restart: %s", strerror(errno));
    else {
        MUST(send(a3, "hi", 2, 0));
        expect_msg(c3, "abstract connection", "hi", 2);
    }
    MUST(send(c, "old", 3, 0));
    expect_msg(a, "old connection", "old", 3);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

static int mode_pending(const char *dir)
{
    char srv[256];
    snprintf(srv, sizeof srv, "%s/srv", dir);
    int l = sock_at(SOCK_STREAM, srv, 0);
    MUST(listen(l, 4));
    int c = connect_to(SOCK_STREAM, srv, 0);
    (void)c;
    wait_go();
    int a = accept(l, NULL, NULL);
    if (a < 0) fail("accept after the refusal: %s", strerror(errno));
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

static int mode_rights(void)
{
    int sv[2];
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    int fd = open("/dev/null", O_RDONLY);
    char data = 'x';
    struct iovec iov = { &data, 1 };
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    MUST(sendmsg(sv[0], &m, 0));
    wait_go();
    char got;
    struct msghdr r = { .msg_iov = &(struct iovec){ &got, 1 }, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(sv[1], &r, MSG_DONTWAIT) != 1 || !CMSG_FIRSTHDR(&r)) fail("the fd in flight did not arrive after the refusal");
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

/* A datagram queued on a socket that asks for receive timestamps: refused,
 * and still there with its arrival time (not later than the refusal). */
static int mode_stamped(void)
{
    int sv[2], on = 1;
    MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv));
    MUST(setsockopt(sv[1], SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on));
    struct timeval sent;
    gettimeofday(&sent, NULL);
    MUST(send(sv[0], "t", 1, 0));
    wait_go();
    char got, ctl[CMSG_SPACE(sizeof(struct timeval))];
    struct msghdr r = { .msg_iov = &(struct iovec){ &got, 1 }, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(sv[1], &r, MSG_DONTWAIT) != 1) fail("the stamped datagram is gone");
    struct cmsghdr *cm = CMSG_FIRSTHDR(&r);
    if (!cm || cm->cmsg_type != SCM_TIMESTAMP) fail("no timestamp with the datagram");
    else {
        struct timeval at;
        memcpy(&at, CMSG_DATA(cm), sizeof at);
        if (at.tv_sec > sent.tv_sec + 1) fail("stamped %ld s after it was sent", (long)(at.tv_sec - sent.tv_sec));
    }
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

static int mode_serve(const char *dir)
{
    char srv[256];
    snprintf(srv, sizeof srv, "%s/srv", dir);
    int l = sock_at(SOCK_STREAM, srv, 0);
    MUST(listen(l, 4));
    printf("listening\n");
    int a;
    MUST(a = accept(l, NULL, NULL));
    wait_go();
    char buf[64];
    ssize_t n = recv(a, buf, sizeof buf, 0);
    if (n <= 0) fail("nothing from the outside client");
    else printf("got %.*s\n", (int)n, buf);
    if (send(a, "pong", 4, MSG_NOSIGNAL) != 4) fail("send to the outside client: %s", strerror(errno));
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    if (argc >= 2 && !strcmp(argv[1], "pairs")) return mode_pairs();
    if (argc >= 3 && !strcmp(argv[1], "listen")) return mode_listen(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "pending")) return mode_pending(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "rights")) return mode_rights();
    if (argc >= 2 && !strcmp(argv[1], "stamped")) return mode_stamped();
    if (argc >= 3 && !strcmp(argv[1], "serve")) return mode_serve(argv[2]);
    fprintf(stderr, "usage: unix_sockets pairs|listen DIR|pending DIR|rights|serve DIR\n");
    return 2;
}
