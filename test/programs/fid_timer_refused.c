// fid_timer_refused.c MODE
//
// Timer state stasis refuses by name. MODE:
//   overrun   a periodic 1 ms timer overran while its signal was blocked;
//             the signal was then taken, so timer_getoverrun() > 0 (it
//             keeps running: checked before its next pending signal)
//   periodic  a periodic timer's signal is pending (blocked); it is timer 1
//   cpuclock  a timer on the CPU clock of a child process
// Prints "ready"; SIGUSR2 (blocked, taken with sigwaitinfo) makes it print
// "still here" and exit 0, so a test can see it was left running.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2)
        return 2;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGRTMIN;
    timer_t t;
    clockid_t clock = CLOCK_MONOTONIC;
    pid_t kid = 0;
    if (!strcmp(argv[1], "cpuclock")) {
        kid = fork();
        if (kid == 0) {
            for (;;)
                pause();
        }
        if (clock_getcpuclockid(kid, &clock))
            return 1;
    }
    timer_t first;
    if (!strcmp(argv[1], "periodic") && timer_create(CLOCK_MONOTONIC, &ev, &first))
        return 1; /* so the periodic timer is timer 1 */
    if (timer_create(clock, &ev, &t))
        return 1;
    sigset_t rt;
    sigemptyset(&rt);
    sigaddset(&rt, SIGRTMIN);
    if (!strcmp(argv[1], "overrun")) {
        struct itimerspec its = { { 0, 1000000 }, { 0, 1000000 } };
        timer_settime(t, 0, &its, NULL);
        struct timespec pause_for = { 0, 20000000 };
        nanosleep(&pause_for, NULL);
        sigwaitinfo(&rt, NULL);
        if (timer_getoverrun(t) <= 0)
            return 1;
    } else if (!strcmp(argv[1], "periodic")) {
        struct itimerspec its = { { 100, 0 }, { 0, 1000000 } };
        timer_settime(t, 0, &its, NULL);
        sigset_t pend;
        do {
            sigpending(&pend);
        } while (!sigismember(&pend, SIGRTMIN));
    } else if (!strcmp(argv[1], "cpuclock")) {
        struct itimerspec its = { { 0, 0 }, { 100, 0 } };
        timer_settime(t, 0, &its, NULL);
    } else {
        return 2;
    }
    printf("ready\n");
    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR2);
    while (sigwaitinfo(&go, NULL) < 0)
        ;
    printf("still here\n");
    if (kid)
        kill(kid, SIGKILL);
    return 0;
}
