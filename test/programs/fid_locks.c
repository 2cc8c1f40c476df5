// fid_locks: holds every kind of advisory file lock in its cwd, with a child
// blocked waiting for one of them, prints "ready" and waits for SIGUSR1;
// then checks each lock from fresh open files (flock and OFD locks conflict
// between open file descriptions, so its own locks are visible to it),
// releases the contended range and reaps the child, which must get it:
// "child locked", "locks ok". With `nochild`: the same without the child.
//   a: flock exclusive        d: flock shared
//   b: POSIX read 10..29, POSIX write 100..EOF (the child waits on 100)
//   c: OFD write 5..11, OFD read 20..29
//   e: flock exclusive taken by the child on the open file both hold
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go, a_fd = -1;
static void on_usr1(int sig) { (void)sig; go = 1; }
/* SIGUSR2 closes "a": its flock then lives only where its open file is held elsewhere. */
static void on_usr2(int sig) { (void)sig; close(a_fd); a_fd = -1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static int fail(const char *why) { say("FAIL: "); say(why); say("\n"); return 1; }

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &fl);
}

/*
 * What an OFD lock request of `type` at `start` would conflict with, seen
 * from another open file of the same file (kept open: closing any fd of a
 * file drops the process's POSIX locks on it).
 */
static struct flock probe(int fd, short type, off_t start)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1 };
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0) fl.l_type = -1;
    return fl;
}

static int is(struct flock fl, short type, pid_t pid, off_t start, off_t len)
{
    if (type == F_UNLCK) return fl.l_type == F_UNLCK;
    return fl.l_type == type && fl.l_pid == pid && fl.l_start == start && fl.l_len == len;
}

/* flock from a fresh open file: 0 granted (and released), 1 refused. */
static int flock_busy(const char *path, int how)
{
    int fd = open(path, O_RDONLY);
    int r = flock(fd, how | LOCK_NB);
    int busy = r != 0 && errno == EWOULDBLOCK;
    close(fd);
    return busy;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    int a = open("a", O_RDWR | O_CREAT, 0600), b = open("b", O_RDWR | O_CREAT, 0600);
    int c = open("c", O_RDWR | O_CREAT, 0600), d = open("d", O_RDONLY | O_CREAT, 0600);
    int pb = open("b", O_RDWR), pc = open("c", O_RDWR), e = open("e", O_RDWR | O_CREAT, 0600);
    if (a < 0 || b < 0 || c < 0 || d < 0 || pb < 0 || pc < 0 || e < 0) return 2;
    if (flock(a, LOCK_EX) || flock(d, LOCK_SH)) return 2;
    a_fd = a;
    if (lock(b, F_SETLK, F_RDLCK, 10, 20) || lock(b, F_SETLK, F_WRLCK, 100, 0)) return 2;
    if (lock(c, F_OFD_SETLK, F_WRLCK, 5, 7) || lock(c, F_OFD_SETLK, F_RDLCK, 20, 10)) return 2;
    int with_child = !(argc > 1 && !strcmp(argv[1], "nochild"));
    pid_t child = with_child ? fork() : -1;
    if (child == 0) {
        /* a flock taken by the child on an open file it shares with the parent */
        if (flock(e, LOCK_EX)) { say("FAIL: child flock\n"); _exit(1); }
        if (lock(pb, F_SETLKW, F_WRLCK, 100, 1) != 0) { say("FAIL: child lock\n"); _exit(1); }
        say("child locked\n");
        _exit(0);
    }
    say("ready\n");
    await_flag(&go);
    pid_t me = getpid();
    if (a_fd >= 0 && !flock_busy("a", LOCK_SH)) return fail("flock a not exclusive");
    if (flock_busy("d", LOCK_SH)) return fail("flock d not shared");
    if (!flock_busy("d", LOCK_EX)) return fail("flock d lost");
    if (with_child && !flock_busy("e", LOCK_SH)) return fail("flock e (the child's) lost");
    if (!is(probe(pb, F_WRLCK, 10), F_RDLCK, me, 10, 20)) return fail("POSIX read lock b 10..29");
    if (!is(probe(pb, F_RDLCK, 10), F_UNLCK, 0, 0, 0)) return fail("POSIX lock b 10 is not a read lock");
    if (!is(probe(pb, F_RDLCK, 5000), F_WRLCK, me, 100, 0)) return fail("POSIX write lock b 100..EOF");
    if (!is(probe(pb, F_WRLCK, 50), F_UNLCK, 0, 0, 0)) return fail("POSIX lock b 50 appeared");
    if (!is(probe(pc, F_RDLCK, 8), F_WRLCK, -1, 5, 7)) return fail("OFD write lock c 5..11");
    if (!is(probe(pc, F_WRLCK, 29), F_RDLCK, -1, 20, 10)) return fail("OFD read lock c 20..29");
    if (!is(probe(pc, F_RDLCK, 29), F_UNLCK, 0, 0, 0)) return fail("OFD lock c 29 is not a read lock");
    // The waiting child gets the range once it is free.
    if (lock(b, F_SETLK, F_UNLCK, 100, 0)) return fail("unlock b");
    int status;
    if (with_child && (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)) return fail("child");
    say("locks ok\n");
    return 0;
}
