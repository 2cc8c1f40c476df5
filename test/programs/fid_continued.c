// fid_continued.c: a child continued after a stop, and whether its parent
// has taken that report (waitid with WCONTINUED).
// The child sleeps forever; the test stops it (SIGSTOP) and continues it
// (SIGCONT). The parent prints "ready", then on each SIGUSR1 asks, once,
// with waitid(WCONTINUED | WNOHANG), and prints "continued reported" or
// "nothing to report".
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t asked;

static void on_usr1(int sig)
{
    (void)sig;
    asked++;
}

int main(void)
{
    pid_t child = fork();
    if (child < 0) return 2;
    if (child == 0) {
        for (;;) pause();
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    if (sigaction(SIGUSR1, &sa, NULL) != 0) return 2;
    printf("ready\n");
    fflush(stdout);
    int answered = 0;
    for (;;) {
        pause();
        while (answered < asked) {
            answered++;
            siginfo_t si;
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, child, &si, WCONTINUED | WNOHANG) != 0) return 3;
            printf("%s\n", si.si_pid == child && si.si_code == CLD_CONTINUED ? "continued reported" : "nothing to report");
            fflush(stdout);
        }
    }
}
