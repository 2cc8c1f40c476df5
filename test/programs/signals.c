// signals.c
//
// Checkpoint/restart target for signal state: handlers, sa_flags, sa_mask,
// blocked mask and a pending (blocked) signal.
//
//   h1 for SIGUSR1: SA_SIGINFO|SA_RESTART, sa_mask = {SIGUSR2, SIGHUP}
//   h2 for SIGUSR2: SA_SIGINFO, sets a flag
//   SIGUSR1 is blocked with sigprocmask.
//
// Protocol: prints "ready"; the test sends SIGUSR1 (stays pending, blocked),
// may checkpoint/restart, then sends SIGUSR2.  The program then prints
// "pending yes" (or "pending no"), unblocks SIGUSR1 so h1 runs, and prints
// "h1 ran signo=10 code=0 mask-ok flags-ok".  Anything unexpected is
// reported with "FAIL: <why>" lines and exit status 1.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr2;
static volatile sig_atomic_t h1_ran, h1_signo, h1_code, h1_mask_ok;

static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(1, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(2);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        _exit(2);
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    write_all(buf, (size_t)n);
}

static void h1(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    sigset_t cur;
    sigemptyset(&cur);
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    h1_signo = si->si_signo;
    h1_code = si->si_code;
    /* sa_mask members plus the signal itself (no SA_NODEFER) must be blocked */
    h1_mask_ok = sigismember(&cur, SIGUSR2) == 1 && sigismember(&cur, SIGHUP) == 1 &&
                 sigismember(&cur, SIGUSR1) == 1;
    h1_ran++;
}

static void h2(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    got_usr2 = 1;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h1;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    sigaddset(&sa.sa_mask, SIGHUP);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        out("FAIL: sigaction SIGUSR1\n");
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = h2;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO;
    if (sigaction(SIGUSR2, &sa, NULL) < 0) {
        out("FAIL: sigaction SIGUSR2\n");
        return 1;
    }

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &usr1, NULL) < 0) {
        out("FAIL: sigprocmask\n");
        return 1;
    }

    out("ready\n");
    while (!got_usr2)
        pause();

    int bad = 0;
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    if (sigismember(&cur, SIGUSR1) != 1) {
        out("FAIL: SIGUSR1 no longer blocked\n");
        bad = 1;
    }
    if (h1_ran) {
        out("FAIL: h1 ran while SIGUSR1 was blocked\n");
        bad = 1;
    }

    sigset_t pend;
    sigemptyset(&pend);
    sigpending(&pend);
    int pending = sigismember(&pend, SIGUSR1) == 1;
    out("pending %s\n", pending ? "yes" : "no");

    sigprocmask(SIG_UNBLOCK, &usr1, NULL); /* h1 runs here if pending */

    struct sigaction old;
    memset(&old, 0, sizeof old);
    sigaction(SIGUSR1, NULL, &old);
    int flags_ok = (old.sa_flags & (SA_SIGINFO | SA_RESTART)) == (SA_SIGINFO | SA_RESTART) &&
                   old.sa_sigaction == h1;

    if (!h1_ran) {
        out("FAIL: h1 did not run\n");
        return 1;
    }
    out("h1 ran signo=%d code=%d %s %s\n", (int)h1_signo, (int)h1_code,
        h1_mask_ok ? "mask-ok" : "mask-bad", flags_ok ? "flags-ok" : "flags-bad");
    if (h1_ran != 1) {
        out("FAIL: h1 ran %d times\n", (int)h1_ran);
        bad = 1;
    }
    if (h1_signo != SIGUSR1) {
        out("FAIL: si_signo %d\n", (int)h1_signo);
        bad = 1;
    }
    if (h1_code != SI_USER) {
        out("FAIL: si_code %d\n", (int)h1_code);
        bad = 1;
    }
    if (!h1_mask_ok) {
        out("FAIL: blocked mask inside h1\n");
        bad = 1;
    }
    if (!flags_ok) {
        out("FAIL: SIGUSR1 disposition changed\n");
        bad = 1;
    }
    return bad;
}
