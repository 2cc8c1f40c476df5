// fid_itimers.c
//
// Interval timers: ITIMER_REAL 1.5 s (one-shot; alarm() is this timer),
// ITIMER_VIRTUAL 50 s of user time reloading every 1 s, ITIMER_PROF 60 s
// reloading every 2.5 s (the kernel adds one tick to CPU itimers: up to
// 10 ms more than set is what an uninterrupted run sees too). SIGALRM is blocked. Prints "ready"; SIGUSR2
// (blocked, taken with sigwaitinfo) starts the check: getitimer shows the
// same intervals and remaining times above 0 and at most what was set
// (ITIMER_REAL may already have fired: then its SIGALRM was pending and
// came back from the image); then SIGALRM arrives. Prints "itimers ok",
// "alarm".
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>

static int bad;

static long long us(struct timeval t) { return t.tv_sec * 1000000LL + t.tv_usec; }

static void check(const char *name, int which, long long max_us, long long interval_us, int may_be_done)
{
    struct itimerval it;
    getitimer(which, &it);
    long long left = us(it.it_value);
    long long tick = which == ITIMER_REAL ? 0 : 10000;
    if (us(it.it_interval) != interval_us || left > max_us + tick || (left <= 0 && !may_be_done)) {
        printf("FAIL: %s left %lld interval %lld\n", name, left, us(it.it_interval));
        bad = 1;
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    struct itimerval real = { { 0, 0 }, { 1, 500000 } };
    struct itimerval virt = { { 1, 0 }, { 50, 0 } };
    struct itimerval prof = { { 2, 500000 }, { 60, 0 } };
    setitimer(ITIMER_REAL, &real, NULL);
    setitimer(ITIMER_VIRTUAL, &virt, NULL);
    setitimer(ITIMER_PROF, &prof, NULL);
    printf("ready\n");

    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR2);
    while (sigwaitinfo(&go, NULL) < 0)
        ;
    check("ITIMER_REAL", ITIMER_REAL, 1500000, 0, 1);
    check("ITIMER_VIRTUAL", ITIMER_VIRTUAL, 50000000, 1000000, 0);
    check("ITIMER_PROF", ITIMER_PROF, 60000000, 2500000, 0);
    printf("itimers %s\n", bad ? "bad" : "ok");
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    siginfo_t si;
    while (sigwaitinfo(&alrm, &si) < 0)
        ;
    printf("alarm\n");
    check("ITIMER_REAL", ITIMER_REAL, 0, 0, 1);
    return bad;
}
