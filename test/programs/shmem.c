// shmem: parent and child play ping-pong through MAP_SHARED|MAP_ANONYMOUS
// memory for 400 rounds; "ready" once the child answered round 1.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void nap(void)
{
    struct timespec ts = {0, 1000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wait until slot holds k; a stuck partner means memory is not shared. */
static int await(volatile long *slot, long k)
{
    double start = now();
    while (*slot != k) {
        if (now() - start > 10) {
            char b[64];
            snprintf(b, sizeof b, "FAIL: stuck at %ld\n", k);
            say(b);
            return -1;
        }
        nap();
    }
    return 0;
}

int main(void)
{
    volatile long *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 2;
    pid_t child = fork();
    if (child < 0) return 2;
    char line[64];
    if (child == 0) {
        for (long k = 1; k <= 400; k++) {
            if (await(&m[0], k)) _exit(1);
            /* print before answering, so the output order is fixed */
            if (k % 50 == 0) { snprintf(line, sizeof line, "pong %ld\n", k); say(line); }
            m[1] = k;
        }
        _exit(0);
    }
    for (long k = 1; k <= 400; k++) {
        m[0] = k;
        if (await(&m[1], k)) return 1;
        if (k == 1) say("ready\n");
        if (k % 50 == 0) { snprintf(line, sizeof line, "ping %ld\n", k); say(line); }
    }
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { say("FAIL: child\n"); return 1; }
    say("done\n");
    return 0;
}
