// sigarrive.c: a signal that arrives as a checkpoint stops the program
// must reach its handler once, with its own siginfo: in the original when
// it runs on, in the image when it is restarted.
//
// SIGUSR1 has an SA_SIGINFO handler that records si_code and whether
// si_pid was set; main sleeps in 10 ms rounds and prints, after each
// handler run, `usr1 code=<si_code> from-a-process=<yes|no> count=<n>`.
// Protocol: `ready`, then one such line per SIGUSR1.
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ran, code, from_process;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    code = si->si_code;
    from_process = si->si_pid != 0;
    ran++;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) return 2;
    printf("ready\n");
    fflush(stdout);
    int seen = 0;
    for (;;) {
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
        while (seen < ran) {
            seen++;
            printf("usr1 code=%d from-a-process=%s count=%d\n", (int)code, from_process ? "yes" : "no", seen);
            fflush(stdout);
        }
    }
}
