// fid_rtsignals.c
//
// Queued signals, each with its own siginfo, process-wide and per thread.
// Every thread blocks SIGUSR1, SIGRTMIN+1 and SIGRTMIN+3. Queued before
// "ready", in this order:
//   process-wide: SIGRTMIN+1 x4 by sigqueue (SI_QUEUE, values 100..103),
//                 SIGRTMIN+3 by kill (SI_USER), SIGUSR1 by kill (SI_USER),
//                 SIGRTMIN+1 by a child's sigqueue (SI_QUEUE, value 300,
//                 si_pid = the child), SIGRTMIN+3 with si_code -60 and
//                 value 400 by rt_sigqueueinfo;
//   main thread:  SIGRTMIN+1 x2 by pthread_sigqueue (values 200, 201),
//                 SIGRTMIN+3 by tgkill (this kernel says SI_USER);
//   second thread: SIGRTMIN+1 x3 by pthread_sigqueue (values 500..502).
// Then SIGUSR2 (a handler sets a flag) starts the check: each
// thread takes its signals with sigtimedwait and compares signo, code,
// pid, uid and value with what was sent, in the kernel's order (the
// thread's own queue, then the process's; in each, lowest signal first,
// then first in first out). Prints "main ok 11", "thread ok 3"
// (the thread's own three; the process-wide ones were taken by main).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct want { int signo, code, pid, value; };

static sigset_t queued;
static pid_t self, child;
static pthread_t second;
static volatile int thread_go, thread_started;
static int bad;

static int rt(int n) { return SIGRTMIN + n; }

static int drain(const char *who, const struct want *w, int n)
{
    struct timespec zero = { 0, 0 };
    siginfo_t si;
    int got = 0;
    for (;;) {
        int s = sigtimedwait(&queued, &si, &zero);
        if (s < 0) {
            if (errno == EAGAIN)
                break;
            printf("FAIL: %s sigtimedwait %s\n", who, strerror(errno));
            bad = 1;
            break;
        }
        if (got >= n) {
            printf("FAIL: %s extra signal %d code %d\n", who, s, si.si_code);
            bad = 1;
        } else if (si.si_signo != w[got].signo || si.si_code != w[got].code || si.si_pid != w[got].pid ||
                   si.si_uid != getuid() || (w[got].value >= 0 && si.si_value.sival_int != w[got].value)) {
            printf("FAIL: %s #%d: got signo %d code %d pid %d value %d, want signo %d code %d pid %d value %d\n",
                   who, got, si.si_signo, si.si_code, si.si_pid, si.si_value.sival_int, w[got].signo, w[got].code,
                   w[got].pid, w[got].value);
            bad = 1;
        }
        got++;
    }
    if (got != n) {
        printf("FAIL: %s took %d signals, want %d\n", who, got, n);
        bad = 1;
    }
    return got;
}

static void *thread_main(void *arg)
{
    (void)arg;
    /* glibc has set this thread's own mask by now (it starts with all blocked) */
    __atomic_store_n(&thread_started, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(&thread_go, __ATOMIC_ACQUIRE))
        usleep(1000);
    struct want w[3];
    for (int i = 0; i < 3; i++)
        w[i] = (struct want){ rt(1), SI_QUEUE, self, 500 + i };
    int n = drain("thread", w, 3);
    printf("thread ok %d\n", n);
    fflush(stdout);
    return NULL;
}

static volatile sig_atomic_t go;
static void on_go(int sig) { (void)sig; go = 1; }

int main(void)
{
    signal(SIGUSR2, on_go);
    setvbuf(stdout, NULL, _IONBF, 0);
    self = getpid();
    sigemptyset(&queued);
    sigaddset(&queued, SIGUSR1);
    sigaddset(&queued, rt(1));
    sigaddset(&queued, rt(3));
    sigset_t all = queued;
    sigprocmask(SIG_BLOCK, &all, NULL);
    if (pthread_create(&second, NULL, thread_main, NULL)) {
        printf("FAIL: pthread_create\n");
        return 1;
    }
    while (!__atomic_load_n(&thread_started, __ATOMIC_ACQUIRE))
        usleep(1000);
    union sigval v;
    for (int i = 0; i < 4; i++) {
        v.sival_int = 100 + i;
        sigqueue(self, rt(1), v);
    }
    kill(self, rt(3));
    kill(self, SIGUSR1);
    child = fork();
    if (child == 0) {
        union sigval cv = { .sival_int = 300 };
        sigqueue(getppid(), rt(1), cv);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = rt(3);
    info.si_code = -60;
    info.si_pid = self;
    info.si_uid = getuid();
    info.si_value.sival_int = 400;
    syscall(SYS_rt_sigqueueinfo, self, rt(3), &info);
    for (int i = 0; i < 2; i++) {
        v.sival_int = 200 + i;
        pthread_sigqueue(pthread_self(), rt(1), v);
    }
    syscall(SYS_tgkill, self, self, rt(3));
    for (int i = 0; i < 3; i++) {
        v.sival_int = 500 + i;
        pthread_sigqueue(second, rt(1), v);
    }
    printf("ready\n");

    // Polled, not waited for with sigwaitinfo: that changes the blocked
    // mask while it waits, and the test compares the mask from outside.
    while (!go)
        usleep(1000);
    struct want w[] = {
        { rt(1), SI_QUEUE, self, 200 }, { rt(1), SI_QUEUE, self, 201 },
        { rt(3), SI_USER, self, -1 }, // tgkill: this kernel reports SI_USER
        { SIGUSR1, SI_USER, self, -1 },
        { rt(1), SI_QUEUE, self, 100 }, { rt(1), SI_QUEUE, self, 101 },
        { rt(1), SI_QUEUE, self, 102 }, { rt(1), SI_QUEUE, self, 103 },
        { rt(1), SI_QUEUE, child, 300 },
        { rt(3), SI_USER, self, -1 }, { rt(3), -60, self, 400 },
    };
    int n = drain("main", w, sizeof w / sizeof w[0]);
    printf("main ok %d\n", n);
    __atomic_store_n(&thread_go, 1, __ATOMIC_RELEASE);
    pthread_join(second, NULL);
    return bad;
}
