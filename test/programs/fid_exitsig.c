// fid_exitsig.c
//
// Children whose exit signal is not SIGCHLD (raw clone with SIGUSR1 as
// exit_signal): L lives (pause loop), Z has exited with status 7 and is a
// zombie. SIGUSR1 is blocked in the parent; the one Z sent at its end was
// taken with sigwaitinfo. Prints "ready"; SIGUSR2 (blocked, taken with
// sigwaitinfo) starts the check: /proc/L/stat says exit_signal 10; Z is
// invisible to waitpid without __WCLONE and reaped with it (status 7); L
// killed with SIGKILL sends SIGUSR1 (CLD_KILLED) and is reaped with
// __WCLONE. Prints "exitsig ok".
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int bad;

static int exit_signal_of(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')') + 2;
    int field = 3, sig = -1;
    for (char *tok = strtok(p, " "); tok; tok = strtok(NULL, " "), field++)
        if (field == 38)
            sscanf(tok, "%d", &sig);
    return sig;
}

static pid_t clone_child(void)
{
    return (pid_t)syscall(SYS_clone, SIGUSR1, 0, 0, 0, 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);

    pid_t l = clone_child();
    if (l == 0) {
        for (;;)
            pause();
    }
    pid_t z = clone_child();
    if (z == 0)
        syscall(SYS_exit_group, 7);
    siginfo_t si;
    sigwaitinfo(&usr1, &si);
    if (si.si_pid != z) {
        printf("FAIL: SIGUSR1 from %d, not Z\n", si.si_pid);
        return 1;
    }
    printf("ready\n");

    sigset_t go;
    sigemptyset(&go);
    sigaddset(&go, SIGUSR2);
    while (sigwaitinfo(&go, NULL) < 0)
        ;
    if (exit_signal_of(l) != SIGUSR1) {
        printf("FAIL: L has exit_signal %d\n", exit_signal_of(l));
        bad = 1;
    }
    int st;
    if (waitpid(z, &st, WNOHANG) != -1 || errno != ECHILD) {
        printf("FAIL: Z seen by waitpid without __WCLONE\n");
        bad = 1;
    }
    if (waitpid(z, &st, __WCLONE) != z || !WIFEXITED(st) || WEXITSTATUS(st) != 7) {
        printf("FAIL: Z not reaped with __WCLONE and status 7\n");
        bad = 1;
    }
    kill(l, SIGKILL);
    memset(&si, 0, sizeof si);
    sigwaitinfo(&usr1, &si);
    if (si.si_pid != l || si.si_code != CLD_KILLED) {
        printf("FAIL: SIGUSR1 from %d code %d\n", si.si_pid, si.si_code);
        bad = 1;
    }
    if (waitpid(l, &st, __WCLONE) != l || !WIFSIGNALED(st)) {
        printf("FAIL: L not reaped with __WCLONE\n");
        bad = 1;
    }
    printf("exitsig %s\n", bad ? "bad" : "ok");
    return bad;
}
