// POSIX message queues across a restart. A named queue (its name is
// argv[1]) with messages of several priorities, opened read-write and
// non-blocking, and a second read-only fd on it; an unlinked queue with
// messages, held write-only and read-only. "ready" once set; on SIGUSR1
// every attribute, mode and message (in order, with its priority) is
// checked, then "ok" or "FAIL ..." lines. With "notify" as argv[2], a
// notification is registered on the named queue (refused by stasis).
// build: -lrt
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static int failures;
#define FAIL(...) do { printf("FAIL "); printf(__VA_ARGS__); printf("\n"); failures++; } while (0)
#define MUST(call) do { if ((call) < 0) { printf("setup failed: %s: %s\n", #call, strerror(errno)); exit(2); } } while (0)

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

struct msg { const char *text; unsigned prio; };
static const struct msg named_in[] = { { "one", 1 }, { "two", 5 }, { "three", 1 }, { "four", 5 }, { "five", 0 }, { "six", 31 } };
static const struct msg named_out[] = { { "six", 31 }, { "two", 5 }, { "four", 5 }, { "one", 1 }, { "three", 1 }, { "five", 0 } };
static const struct msg hidden_in[] = { { "hidden-a", 2 }, { "hidden-b", 7 }, { "hidden-c", 2 } };
static const struct msg hidden_out[] = { { "hidden-b", 7 }, { "hidden-a", 2 }, { "hidden-c", 2 } };

static void check_attr(const char *what, mqd_t q, long flags, long maxmsg, long msgsize, long cur)
{
    struct mq_attr a;
    if (mq_getattr(q, &a) < 0) { FAIL("%s: mq_getattr: %s", what, strerror(errno)); return; }
    if (a.mq_flags != flags || a.mq_maxmsg != maxmsg || a.mq_msgsize != msgsize || a.mq_curmsgs != cur)
        FAIL("%s: flags %ld maxmsg %ld msgsize %ld curmsgs %ld, expected %ld %ld %ld %ld", what,
             a.mq_flags, a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs, flags, maxmsg, msgsize, cur);
}

static void check_messages(const char *what, mqd_t q, const struct msg *want, int n, long msgsize)
{
    char buf[256];
    for (int i = 0; i < n; i++) {
        unsigned prio;
        ssize_t got = mq_receive(q, buf, msgsize, &prio);
        if (got < 0) { FAIL("%s: message %d: %s", what, i, strerror(errno)); return; }
        if ((size_t)got != strlen(want[i].text) || memcmp(buf, want[i].text, got) || prio != want[i].prio)
            FAIL("%s: message %d is \"%.*s\" prio %u, expected \"%s\" prio %u", what, i, (int)got, buf, prio, want[i].text, want[i].prio);
    }
    unsigned prio;
    if (mq_receive(q, buf, msgsize, &prio) >= 0 || errno != EAGAIN) FAIL("%s: more messages than expected", what);
}

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    const char *name = argv[1];
    char hidden[300];
    snprintf(hidden, sizeof hidden, "%s-hidden", name);
    signal(SIGUSR1, on_usr1);
    struct mq_attr a = { .mq_maxmsg = 8, .mq_msgsize = 100 };
    mq_unlink(name);
    mq_unlink(hidden);
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK, 0640, &a);
    MUST(q);
    for (unsigned i = 0; i < sizeof named_in / sizeof *named_in; i++) MUST(mq_send(q, named_in[i].text, strlen(named_in[i].text), named_in[i].prio));
    mqd_t ro = mq_open(name, O_RDONLY);
    MUST(ro);
    struct mq_attr b = { .mq_maxmsg = 4, .mq_msgsize = 64 };
    mqd_t hw = mq_open(hidden, O_WRONLY | O_CREAT | O_EXCL, 0600, &b);
    MUST(hw);
    mqd_t hr = mq_open(hidden, O_RDONLY | O_NONBLOCK);
    MUST(hr);
    MUST(mq_unlink(hidden));
    for (unsigned i = 0; i < sizeof hidden_in / sizeof *hidden_in; i++) MUST(mq_send(hw, hidden_in[i].text, strlen(hidden_in[i].text), hidden_in[i].prio));
    if (argc > 2 && !strcmp(argv[2], "notify")) {
        struct sigevent ev = { .sigev_notify = SIGEV_NONE };
        MUST(mq_notify(hr, &ev));
    }
    printf("ready\n");
    fflush(stdout);
    while (!go) pause();

    struct stat st;
    if (fstat(q, &st) < 0 || (st.st_mode & 0777) != 0640) FAIL("named queue: mode %o, expected 640", st.st_mode & 0777);
    if (fstat(hw, &st) < 0 || (st.st_mode & 0777) != 0600 || st.st_nlink != 0) FAIL("unlinked queue: mode %o nlink %ld, expected 600 and 0", st.st_mode & 0777, (long)st.st_nlink);
    check_attr("named queue", q, O_NONBLOCK, 8, 100, 6);
    check_attr("named queue read-only fd", ro, 0, 8, 100, 6);
    check_attr("unlinked queue", hw, 0, 4, 64, 3);
    check_attr("unlinked queue read fd", hr, O_NONBLOCK, 4, 64, 3);
    if (fcntl(ro, F_GETFL) & O_ACCMODE) FAIL("read-only fd is not O_RDONLY");
    if ((fcntl(hw, F_GETFL) & O_ACCMODE) != O_WRONLY) FAIL("write-only fd is not O_WRONLY");
    if (mq_send(ro, "x", 1, 0) == 0 || errno != EBADF) FAIL("send on the read-only fd: %s", strerror(errno));
    check_messages("named queue", q, named_out, 6, 100);
    check_messages("unlinked queue", hr, hidden_out, 3, 64);
    // Still one queue behind both fds: what one sends, the other receives.
    MUST(mq_send(hw, "again", 5, 3));
    char buf[64];
    unsigned prio;
    ssize_t n = mq_receive(hr, buf, sizeof buf, &prio);
    if (n != 5 || memcmp(buf, "again", 5) || prio != 3) FAIL("unlinked queue: the two fds are not one queue");
    mq_unlink(name);
    printf(failures ? "done with failures\n" : "ok\n");
    return failures ? 1 : 0;
}
