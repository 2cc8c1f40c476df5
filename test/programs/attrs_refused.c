// build: -pthread
// Attributes a checkpoint must refuse by name: run with `seccomp` (an
// allow-everything seccomp filter), `sud` (syscall user dispatch on, the
// selector allowing calls), `deadline` (SCHED_DEADLINE, 2 ms every
// 20 ms) or `ids` (a second thread alone becomes uid 1000, with the raw
// system call: glibc would change every thread). Prints "ready", then "alive N" every 20 ms until killed, so a
// test sees it go on after the refusal.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define PR_SET_SYSCALL_USER_DISPATCH_ 59
#define PR_SYS_DISPATCH_ON_ 1
#define SCHED_DEADLINE_ 6
struct attr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t runtime, deadline, period; };

static volatile char selector; // SYSCALL_DISPATCH_FILTER_ALLOW
static sem_t changed;
static int thread_result;

static void *own_ids(void *arg)
{
    (void)arg;
    thread_result = syscall(SYS_setresuid, 1000, 1000, 1000);
    sem_post(&changed);
    for (;;) pause();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    int r = -1;
    if (!strcmp(mode, "seccomp")) {
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = { 1, &allow };
        r = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    } else if (!strcmp(mode, "sud")) {
        r = prctl(PR_SET_SYSCALL_USER_DISPATCH_, PR_SYS_DISPATCH_ON_, 0, 0, &selector);
    } else if (!strcmp(mode, "deadline")) {
        struct attr a = { .size = sizeof a, .policy = SCHED_DEADLINE_, .runtime = 2000000, .deadline = 20000000, .period = 20000000 };
        r = syscall(SYS_sched_setattr, 0, &a, 0);
    } else if (!strcmp(mode, "ids")) {
        pthread_t th;
        sem_init(&changed, 0, 0);
        r = pthread_create(&th, NULL, own_ids, NULL) ? -1 : 0;
        while (!r && sem_wait(&changed)) { /* EINTR */ }
        if (!r) r = thread_result;
    } else {
        printf("usage: attrs_refused seccomp|sud|deadline|ids\n");
        return 2;
    }
    if (r < 0) {
        printf("setup failed: %s: %s\n", mode, strerror(errno));
        return 2;
    }
    printf("ready\n");
    for (int n = 1;; n++) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        while (nanosleep(&ts, &ts) && errno == EINTR) { /* the rest */ }
        printf("alive %d\n", n);
    }
}
