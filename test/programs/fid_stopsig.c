// fid_stopsig.c
//
// Children stopped by job-control signals, and what their parent was told.
//   A: in its own process group, stops itself with SIGTSTP; the parent has
//      taken that stop with waitpid(WUNTRACED) and the SIGCHLD with
//      sigwaitinfo (nothing left to report). A SIGUSR1 (A has a handler)
//      is pending in A: it stays pending while A is stopped.
//   B: in its own process group, stopped by SIGTTIN from the parent; that
//      stop is not reported yet, and its SIGCHLD (blocked) is pending.
// Prints "ready"; SIGUSR1 (a handler sets a flag) starts the
// check: SIGCHLD pending from B (CLD_STOPPED, status SIGTTIN); B's stop
// reported by waitpid(WUNTRACED) with SIGTTIN; nothing to report for A;
// both in state T; then SIGCONT to both, each reports WIFCONTINUED (they
// wait in pause() until SIGTERM ends them). Prints "stop ok".
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int bad;

static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] && p[2] ? p[2] : '?';
}

static pid_t child(void)
{
    pid_t p = fork();
    if (p == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        return 0;
    }
    setpgid(p, p);
    return p;
}

static volatile sig_atomic_t go;
static void on_go(int sig) { (void)sig; go = 1; }

int main(void)
{
    signal(SIGUSR1, on_go);
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);

    pid_t a = child();
    if (a == 0) {
        raise(SIGTSTP);
        for (;;)
            pause();
    }
    int st;
    if (waitpid(a, &st, WUNTRACED) != a || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTSTP) {
        printf("FAIL: A did not stop with SIGTSTP\n");
        return 1;
    }
    siginfo_t si;
    sigwaitinfo(&chld, &si);
    kill(a, SIGUSR1); /* stays pending in A while it is stopped (A has the handler) */

    pid_t b = child();
    if (b == 0) {
        for (;;)
            pause();
    }
    kill(b, SIGTTIN);
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, b, &si, WSTOPPED | WNOWAIT) || si.si_status != SIGTTIN) {
        printf("FAIL: B did not stop with SIGTTIN\n");
        return 1;
    }
    printf("ready\n");

    // Polled, not waited for with sigwaitinfo: that changes the blocked
    // mask while it waits, and the test compares the mask from outside.
    while (!go)
        usleep(1000);
    sigset_t pend;
    sigpending(&pend);
    if (!sigismember(&pend, SIGCHLD)) {
        printf("FAIL: SIGCHLD of B not pending\n");
        bad = 1;
    } else {
        memset(&si, 0, sizeof si);
        sigwaitinfo(&chld, &si);
        if (si.si_pid != b || si.si_code != CLD_STOPPED || si.si_status != SIGTTIN) {
            printf("FAIL: SIGCHLD pid %d code %d status %d\n", si.si_pid, si.si_code, si.si_status);
            bad = 1;
        }
    }
    sigpending(&pend);
    if (sigismember(&pend, SIGCHLD)) {
        printf("FAIL: a second SIGCHLD\n");
        bad = 1;
    }
    if (waitpid(a, &st, WUNTRACED | WNOHANG) != 0) {
        printf("FAIL: the stop of A is reported again\n");
        bad = 1;
    }
    if (waitpid(b, &st, WUNTRACED | WNOHANG) != b || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTTIN) {
        printf("FAIL: the stop of B is not reported\n");
        bad = 1;
    }
    if (state_of(a) != 'T' || state_of(b) != 'T') {
        printf("FAIL: states %c %c\n", state_of(a), state_of(b));
        bad = 1;
    }
    pid_t kids[2] = { a, b };
    for (int i = 0; i < 2; i++) {
        kill(kids[i], SIGCONT);
        if (waitpid(kids[i], &st, WCONTINUED) != kids[i] || !WIFCONTINUED(st)) {
            printf("FAIL: child %d not continued (%s, st %x)\n", i, strerror(errno), st);
            bad = 1;
        }
    }
    for (int i = 0; i < 2; i++) {
        kill(kids[i], SIGTERM);
        if (waitpid(kids[i], &st, 0) != kids[i] || !WIFSIGNALED(st) || WTERMSIG(st) != SIGTERM) {
            printf("FAIL: child %d did not end by SIGTERM\n", i);
            bad = 1;
        }
    }
    printf("stop %s\n", bad ? "bad" : "ok");
    return bad;
}
