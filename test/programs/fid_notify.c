// fid_notify [unread|noreaped]: run in an empty directory. Holds:
//  - an inotify fd (non-blocking) with watch descriptors that skip numbers:
//    wd 1 on "dir" (IN_CREATE|IN_DELETE), wd 2 added and removed, wd 3 on
//    "file" (IN_MODIFY|IN_EXCL_UNLINK), wds 4-6 added and removed, wd 7 on
//    "." (IN_ATTRIB|IN_ONESHOT); its IN_IGNORED events are read first;
//  - pidfds: of a child that lives (paused), of a child left a zombie
//    (exit 7), of a child exited and reaped, of itself, and a blocking one
//    of its own main thread (PIDFD_THREAD) not close-on-exec;
//  - "link", a symlink to "target", held with O_PATH|O_NOFOLLOW.
// Prints "ready" and "live <pid>" and waits for SIGUSR1. Then (after
// restart the test has created dir/new, written to file and chmod'ed ".")
// it reads the inotify events and prints "event wd=W mask=M name=N" for
// each, sorted by the test, and checks the pidfds: signal 0 reaches the
// live child, self and own thread; the reaped child's pidfd polls readable
// and signal 0 gives ESRCH; waitid on the zombie's pidfd gives exit 7;
// SIGKILL through the live child's pidfd ends it (waitid: killed). The
// symlink fd is still the link: "notify ok" or "FAIL <what>" lines.
// With "unread": an event is left unread in the queue (for the refusal).
// With "noreaped": no pidfd of a reaped child (for a pid namespace restart).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "await_flag.h"

#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif
#ifndef PIDFD_THREAD
#define PIDFD_THREAD O_EXCL
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static int failures;
#define FAIL(...) do { printf("FAIL "); printf(__VA_ARGS__); printf("\n"); failures++; } while (0)
#define MUST(x) do { if ((x) < 0) { printf("setup failed: %s: %s\n", #x, strerror(errno)); exit(2); } } while (0)

static int pidfd_open(pid_t pid, unsigned flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }
static int pidfd_send_signal(int fd, int sig) { return (int)syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0); }

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    int unread = argc > 1 && !strcmp(argv[1], "unread");
    int with_reaped = !(argc > 1 && !strcmp(argv[1], "noreaped"));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    MUST(mkdir("dir", 0755));
    int f = open("file", O_CREAT | O_WRONLY, 0644);
    MUST(f);
    close(f);
    int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    MUST(in);
    int w1 = inotify_add_watch(in, "dir", IN_CREATE | IN_DELETE);
    int w2 = inotify_add_watch(in, "file", IN_OPEN);
    inotify_rm_watch(in, w2);
    int w3 = inotify_add_watch(in, "file", IN_MODIFY | IN_EXCL_UNLINK);
    for (int i = 0; i < 3; i++) inotify_rm_watch(in, inotify_add_watch(in, ".", IN_ACCESS));
    int w7 = inotify_add_watch(in, ".", IN_ATTRIB | IN_ONESHOT);
    char buf[4096] __attribute__((aligned(8)));
    while (read(in, buf, sizeof buf) > 0) { /* the IN_IGNORED of the removed watches */ }
    if (w1 != 1 || w3 != 3 || w7 != 7) { printf("setup failed: wds %d %d %d\n", w1, w3, w7); return 2; }
    if (unread) {
        int t = open("dir/unread", O_CREAT | O_WRONLY, 0644);
        MUST(t);
        close(t);
    }

    pid_t live = fork();
    MUST(live);
    if (live == 0) { for (;;) pause(); }
    pid_t zombie = fork();
    MUST(zombie);
    if (zombie == 0) _exit(7);
    int pf_live = pidfd_open(live, PIDFD_NONBLOCK);
    int pf_zombie = pidfd_open(zombie, 0);
    MUST(pf_live); MUST(pf_zombie);
    int pf_reaped = -1;
    if (with_reaped) {
        pid_t reaped = fork();
        MUST(reaped);
        if (reaped == 0) _exit(0);
        pf_reaped = pidfd_open(reaped, 0);
        MUST(pf_reaped);
        MUST(waitpid(reaped, NULL, 0));
    }
    siginfo_t si;
    memset(&si, 0, sizeof si);
    MUST(waitid(P_PID, zombie, &si, WEXITED | WNOWAIT)); // a zombie now, not reaped
    int pf_self = pidfd_open(getpid(), 0);
    int pf_thread = pidfd_open(getpid(), PIDFD_THREAD);
    MUST(pf_self); MUST(pf_thread);
    MUST(fcntl(pf_thread, F_SETFD, 0));

    MUST(symlink("target", "link"));
    int lk = open("link", O_PATH | O_NOFOLLOW | O_CLOEXEC);
    MUST(lk);

    printf("ready\nlive %d\n", live);
    await_flag(&go);

    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            printf("event wd=%d mask=%x name=%s\n", e->wd, e->mask, e->len ? e->name : "");
            p += sizeof *e + e->len;
        }
    }
    if (n < 0 && errno != EAGAIN) FAIL("inotify read: %s", strerror(errno));

    if (pidfd_send_signal(pf_self, 0) != 0) FAIL("self pidfd: %s", strerror(errno));
    if (pidfd_send_signal(pf_thread, 0) != 0) FAIL("thread pidfd: %s", strerror(errno));
    if (fcntl(pf_thread, F_GETFD) != 0) FAIL("thread pidfd became close-on-exec");
    if (!(fcntl(pf_live, F_GETFL) & O_NONBLOCK)) FAIL("live pidfd lost PIDFD_NONBLOCK");
    struct pollfd pd = { .fd = pf_reaped, .events = POLLIN };
    if (with_reaped && (poll(&pd, 1, 0) != 1 || !(pd.revents & POLLIN))) FAIL("reaped child's pidfd does not poll readable");
    if (with_reaped && (pidfd_send_signal(pf_reaped, 0) != -1 || errno != ESRCH)) FAIL("reaped child's pidfd: %s, not ESRCH", strerror(errno));
    memset(&si, 0, sizeof si);
    if (waitid(P_PIDFD, pf_zombie, &si, WEXITED) != 0 || si.si_pid != zombie || si.si_code != CLD_EXITED || si.si_status != 7)
        FAIL("zombie's pidfd: waitid gave pid %d code %d status %d (%s)", si.si_pid, si.si_code, si.si_status, strerror(errno));
    pd.fd = pf_live;
    if (poll(&pd, 1, 0) != 0) FAIL("live child's pidfd polls readable before it ends");
    if (pidfd_send_signal(pf_live, 0) != 0) FAIL("live child's pidfd: %s", strerror(errno));
    if (pidfd_send_signal(pf_live, SIGKILL) != 0) FAIL("SIGKILL through the live child's pidfd: %s", strerror(errno));
    memset(&si, 0, sizeof si);
    struct pollfd pw = { .fd = pf_live, .events = POLLIN };
    poll(&pw, 1, 10000);
    if (waitid(P_PIDFD, pf_live, &si, WEXITED) != 0 || si.si_pid != live || si.si_code != CLD_KILLED)
        FAIL("live child's pidfd: waitid gave pid %d code %d (%s)", si.si_pid, si.si_code, strerror(errno));

    struct stat st;
    char target[64] = "";
    if (fstatat(lk, "", &st, AT_EMPTY_PATH) != 0 || !S_ISLNK(st.st_mode)) FAIL("the O_PATH fd is not on the link");
    if (readlinkat(lk, "", target, sizeof target - 1) != 6 || strcmp(target, "target")) FAIL("the link reads '%s'", target);
    if (!(fcntl(lk, F_GETFL) & O_PATH)) FAIL("the link fd lost O_PATH");

    if (failures) return 1;
    printf("notify ok\n");
    return 0;
}
