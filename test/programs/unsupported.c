// unsupported.c
//
// Holds a netlink route socket, a kind stasis refuses (used to test that
// checkpoint refuses it by name and leaves the process running), and both
// ends of a unix socket pair it keeps using.  Prints "ready", then every 5 ms
// increments a counter; every 100 iterations it pushes one byte through the
// pipe and reads it back, then prints "alive <n>" (n = iterations so far:
// 100, 200, ...).  Runs forever.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <linux/netlink.h>

static void say(const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t n = write(1, s, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(2);
        }
        s += n;
        len -= (size_t)n;
    }
}

static void sleep_ms(long ms)
{
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            break;
        req = rem;
    }
}

int main(void)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) {
        say("FAIL: socketpair\n");
        return 1;
    }
    if (socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) < 0) {
        say("FAIL: netlink socket\n");
        return 1;
    }
    say("ready\n");
    for (unsigned long n = 1;; n++) {
        sleep_ms(5);
        if (n % 100 == 0) {
            char c = (char)(n / 100), r = 0;
            ssize_t w;
            do
                w = write(fds[1], &c, 1);
            while (w < 0 && errno == EINTR);
            ssize_t rd;
            do
                rd = read(fds[0], &r, 1);
            while (rd < 0 && errno == EINTR);
            if (w != 1 || rd != 1 || r != c) {
                say("FAIL: socket pair does not work\n");
                return 1;
            }
            char buf[64];
            snprintf(buf, sizeof buf, "alive %lu\n", n);
            say(buf);
        }
    }
}
