// fid_fdowner: signal-driven I/O state of open files. With no argument:
//   pipe A read end: owner F_OWNER_PID (itself), F_SETSIG SIGRTMIN+1, O_ASYNC|O_NONBLOCK
//   pipe B read end: owner F_OWNER_TID (its main thread), O_ASYNC, default SIGIO
//   file "f" (O_RDONLY|O_NOATIME): owner its process group, F_SETSIG SIGRTMIN+2
// prints "ready", waits for SIGUSR1, checks every value with fcntl, then
// writes to both pipes: SIGRTMIN+1 must arrive with si_fd = A, SIGIO must
// arrive: "fdowner ok".
// `lease`: holds a read lease on "f": "ready", then on each SIGUSR1
// "lease read" (or "lease none" once it was broken).
// `owner PID`: pipe A's owner is PID (outside the tree): "ready", then waits.
// `dnotify`: watches its cwd with F_NOTIFY: "ready"; on SIGUSR1 it creates
// a file there and waits for the SIGIO: "dnotify ok".
// The file "f" is also open a second time with O_DIRECT|O_APPEND (checked).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go, rt_fd = -1, sigio;
static void on_usr1(int sig) { (void)sig; go = 1; }
static void on_rt(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; rt_fd = si->si_fd; }
static void on_io(int sig) { (void)sig; sigio = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static int fail(const char *why) { say("FAIL: "); say(why); say("\n"); return 1; }

static int owner_is(int fd, int type, pid_t pid)
{
    struct f_owner_ex o;
    return fcntl(fd, F_GETOWN_EX, &o) == 0 && (int)o.type == type && o.pid == pid;
}

static void wait_usr1(void) { await_flag(&go); }

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int f = open("f", O_RDONLY | O_CREAT | O_NOATIME, 0600);
    if (f < 0) return 2;
    if (argc > 1 && !strcmp(argv[1], "lease")) {
        /* a lease break signals the owner with SIGIO: not this test's business */
        signal(SIGIO, SIG_IGN);
        if (fcntl(f, F_SETLEASE, F_RDLCK)) return 2;
        say("ready\n");
        for (;;) {
            wait_usr1();
            go = 0;
            int l = fcntl(f, F_GETLEASE);
            say(l == F_RDLCK ? "lease read\n" : l == F_UNLCK ? "lease none\n" : "lease other\n");
        }
    }
    if (argc > 1 && !strcmp(argv[1], "dnotify")) {
        int dir = open(".", O_RDONLY | O_DIRECTORY);
        sa.sa_handler = on_io;
        sigaction(SIGIO, &sa, NULL);
        if (dir < 0 || fcntl(dir, F_NOTIFY, DN_CREATE | DN_MULTISHOT)) return 2;
        say("ready\n");
        wait_usr1();
        alarm(10); /* a lost watch ends the program instead of hanging the test */
        if (close(open("created", O_WRONLY | O_CREAT, 0600))) return fail("create");
        while (!sigio) pause();
        say("dnotify ok\n");
        return 0;
    }
    int a[2], b[2];
    if (pipe(a) || pipe(b)) return 2;
    if (argc > 2 && !strcmp(argv[1], "owner")) {
        if (fcntl(a[0], F_SETOWN, atoi(argv[2]))) return 2;
        say("ready\n");
        for (;;) pause();
    }
    sa.sa_handler = on_io;
    sigaction(SIGIO, &sa, NULL);
    sa.sa_handler = NULL;
    sa.sa_sigaction = on_rt;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGRTMIN + 1, &sa, NULL);
    struct f_owner_ex me = { F_OWNER_PID, getpid() }, thread = { F_OWNER_TID, gettid() }, group = { F_OWNER_PGRP, getpgrp() };
    if (fcntl(a[0], F_SETOWN_EX, &me) || fcntl(a[0], F_SETSIG, SIGRTMIN + 1) || fcntl(a[0], F_SETFL, O_ASYNC | O_NONBLOCK)) return 2;
    if (fcntl(b[0], F_SETOWN_EX, &thread) || fcntl(b[0], F_SETFL, O_ASYNC)) return 2;
    if (fcntl(f, F_SETOWN_EX, &group) || fcntl(f, F_SETSIG, SIGRTMIN + 2)) return 2;
    int direct = open("f", O_WRONLY | O_DIRECT | O_APPEND);
    if (direct < 0) return 2;
    say("ready\n");
    wait_usr1();
    if (!owner_is(a[0], F_OWNER_PID, getpid())) return fail("pipe A owner");
    if (!owner_is(b[0], F_OWNER_TID, gettid())) return fail("pipe B owner");
    if (!owner_is(f, F_OWNER_PGRP, getpgrp())) return fail("file owner");
    struct f_owner_ex none_set;
    if (fcntl(a[1], F_GETOWN_EX, &none_set) || none_set.pid != 0) return fail("pipe A write end got an owner");
    if (fcntl(a[0], F_GETSIG) != SIGRTMIN + 1 || fcntl(b[0], F_GETSIG) != 0 || fcntl(f, F_GETSIG) != SIGRTMIN + 2) return fail("F_GETSIG");
    if ((fcntl(a[0], F_GETFL) & (O_ASYNC | O_NONBLOCK)) != (O_ASYNC | O_NONBLOCK)) return fail("pipe A flags");
    if ((fcntl(b[0], F_GETFL) & (O_ASYNC | O_NONBLOCK)) != O_ASYNC) return fail("pipe B flags");
    if ((fcntl(f, F_GETFL) & (O_NOATIME | O_ASYNC)) != O_NOATIME) return fail("file flags");
    if ((fcntl(direct, F_GETFL) & (O_DIRECT | O_APPEND | O_ACCMODE)) != (O_DIRECT | O_APPEND | O_WRONLY)) return fail("O_DIRECT file flags");
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &all, NULL);
    if (write(a[1], "x", 1) != 1 || write(b[1], "y", 1) != 1) return fail("write");
    alarm(10); /* a lost signal ends the program instead of hanging the test */
    while (rt_fd < 0 || !sigio) sigsuspend(&none);
    if (rt_fd != a[0]) return fail("si_fd");
    say("fdowner ok\n");
    return 0;
}
