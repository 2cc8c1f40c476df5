// fid_posix_timers.c
//
// POSIX timers of every notification kind and several clocks, with ids
// that are not contiguous (one created and deleted in the middle):
//   A  CLOCK_MONOTONIC,  SIGEV_SIGNAL SIGRTMIN    value 1000, one-shot 30 s
//   B  CLOCK_REALTIME,   SIGEV_SIGNAL SIGRTMIN+1  value 1001, one-shot 1.5 s
//   (deleted)
//   C  CLOCK_MONOTONIC,  SIGEV_NONE               value 1003, 20 s then every 0.25 s
//   D  CLOCK_BOOTTIME,   SIGEV_THREAD_ID (main) SIGRTMIN+2 value 1004, one-shot 1 s
//   E  CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE       value 1005, 100 s of CPU
//   F  CLOCK_MONOTONIC,  SIGEV_SIGNAL SIGALRM     created, never armed
// The timer signals are blocked. Prints "ready"; SIGUSR2 (blocked, taken
// with sigwaitinfo) starts the check: timer_gettime on every id (intervals
// exact, remaining time above 0 and at most what was set; F disarmed),
// then B and D must fire with SI_TIMER, their own timer id and value
// (if B or D fired before the checkpoint, its signal was pending and comes
// back from the image). Prints "timers ok", "fired B", "fired D".
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int bad;

static timer_t make(clockid_t clock, int notify, int signo, int value)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = signo;
    ev.sigev_value.sival_int = value;
    if (notify == SIGEV_THREAD_ID)
        ev._sigev_un._tid = gettid();
    timer_t t;
    if (timer_create(clock, &ev, &t)) {
        printf("FAIL: timer_create %d: %s\n", value, strerror(errno));
        bad = 1;
    }
    return t;
}

static void arm(timer_t t, long vs, long vns, long is, long ins)
{
    struct itimerspec its = { { is, ins }, { vs, vns } };
    if (timer_settime(t, 0, &its, NULL)) {
        printf("FAIL: timer_settime: %s\n", strerror(errno));
        bad = 1;
    }
}

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static void check(const char *name, timer_t t, long long max_ns, long long interval_ns)
{
    struct itimerspec its;
    if (timer_gettime(t, &its)) {
        printf("FAIL: %s timer_gettime: %s\n", name, strerror(errno));
        bad = 1;
        return;
    }
    long long left = ns(its.it_value);
    if (ns(its.it_interval) != interval_ns || (max_ns == 0 ? left != 0 : (left <= 0 || left > max_ns))) {
        printf("FAIL: %s left %lld interval %lld\n", name, left, ns(its.it_interval));
        bad = 1;
    }
}

static void wait_timer(const char *name, int signo, timer_t t, int value)
{
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, signo);
    siginfo_t si;
    while (sigwaitinfo(&s, &si) < 0)
        ;
    if (si.si_code != SI_TIMER || si.si_timerid != (int)(long)t || si.si_value.sival_int != value) {
        printf("FAIL: %s fired with code %d timer %d value %d\n", name, si.si_code, si.si_timerid, si.si_value.sival_int);
        bad = 1;
    }
    printf("fired %s\n", name);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGRTMIN);
    sigaddset(&block, SIGRTMIN + 1);
    sigaddset(&block, SIGRTMIN + 2);
    sigaddset(&block, SIGALRM);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, NULL);

    timer_t a = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, 1000);
    timer_t b = make(CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN + 1, 1001);
    timer_t gone = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN, 1002);
    timer_t c = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 1003);
    timer_t d = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 1004);
    timer_t e = make(CLOCK_PROCESS_CPUTIME_ID, SIGEV_NONE, 0, 1005);
    timer_t f = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGALRM, 1006);
    timer_delete(gone);
    arm(a, 30, 0, 0, 0);
    arm(b, 1, 500000000, 0, 0);
    arm(c, 20, 0, 0, 250000000);
    arm(d, 1, 0, 0, 0);
    arm(e, 100, 0, 0, 0);
    (void)f;
    printf("ready\n");

    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR2);
    while (sigwaitinfo(&go, NULL) < 0)
        ;
    check("A", a, 30000000000LL, 0);
    check("C", c, 20000000000LL, 250000000);
    check("E", e, 100000000000LL, 0);
    check("F", f, 0, 0);
    struct itimerspec its;
    if (timer_gettime(gone, &its) == 0 || errno != EINVAL) {
        printf("FAIL: the deleted timer exists again\n");
        bad = 1;
    }
    printf("timers %s\n", bad ? "bad" : "ok");
    wait_timer("B", SIGRTMIN + 1, b, 1001);
    wait_timer("D", SIGRTMIN + 2, d, 1004);
    check("B", b, 0, 0);
    return bad;
}
