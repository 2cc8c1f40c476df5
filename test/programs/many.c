// build: -pthread
// many: N small tasks that do nothing, for timing the per-task cost.
//
//   many procs N     the root forks N-1 children; each child (and then the
//                    root) loops in pause(). The children count themselves in
//                    a MAP_SHARED|MAP_ANONYMOUS page (no pipe or other fd is
//                    left open); the root prints "ready" once all N-1 have.
//   many threads N   one process, N-1 pthreads each blocked in pause() (main
//                    too, after "ready"); each counts itself in a global
//                    before it enters pause(); "ready" once all N-1 have.
//
// Nothing else is printed; the program runs until killed. Exit 2 on a usage
// error, 1 (after "FAIL: ...") if fork/pthread_create fails.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile int *started;

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static void __attribute__((noreturn)) idle(void)
{
    for (;;) pause();
}

static void *thread_body(void *arg)
{
    (void)arg;
    __atomic_add_fetch(started, 1, __ATOMIC_SEQ_CST);
    idle();
}

static void wait_started(int want)
{
    while (__atomic_load_n(started, __ATOMIC_SEQ_CST) < want) nap(1000000);
}

int main(int argc, char **argv)
{
    if (argc != 3) return 2;
    char *end;
    long n = strtol(argv[2], &end, 10);
    if (*end || n < 1 || n > 100000) return 2;
    int procs = strcmp(argv[1], "procs") == 0;
    if (!procs && strcmp(argv[1], "threads") != 0) return 2;

    if (procs) {
        started = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (started == MAP_FAILED) return 2;
        for (long i = 1; i < n; i++) {
            pid_t p = fork();
            if (p < 0) { say("FAIL: fork\n"); return 1; }
            if (p == 0) {
                __atomic_add_fetch(started, 1, __ATOMIC_SEQ_CST);
                idle();
            }
        }
    } else {
        static int count;
        started = &count;
        for (long i = 1; i < n; i++) {
            pthread_t t;
            int e = pthread_create(&t, NULL, thread_body, NULL);
            if (e) { say("FAIL: pthread_create\n"); return 1; }
            pthread_detach(t);
        }
    }
    wait_started((int)n - 1);
    say("ready\n");
    idle();
}
