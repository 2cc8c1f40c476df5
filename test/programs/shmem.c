// shmem [memfd]: parent and child play ping-pong through MAP_SHARED|MAP_ANONYMOUS
// memory (or, with "memfd", a shared mapping of a sealed memfd whose fd stays
// open) for 400 rounds; "ready" once the child answered round 1. With memfd
// the parent finally checks the file through its fd and its seals:
// "memfd ok".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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

/* Wait until slot holds k; a stuck partner means memory is not shared.
 * Only time this process spends running counts: each poll adds at most
 * 50 ms, so a freeze (or a checkpoint and a later restart) of any length
 * is not taken for a stuck partner. */
static int await(volatile long *slot, long k)
{
    double waited = 0, last = now();
    while (*slot != k) {
        double t = now(), d = t - last;
        last = t;
        waited += d < 0.05 ? d : 0.05;
        if (waited > 10) {
            char b[64];
            snprintf(b, sizeof b, "FAIL: stuck at %ld\n", k);
            say(b);
            return -1;
        }
        nap();
    }
    return 0;
}

int main(int argc, char **argv)
{
    int use_memfd = argc > 1 && strcmp(argv[1], "memfd") == 0;
    int fd = -1;
    volatile long *m;
    if (use_memfd) {
        fd = memfd_create("stasis-pingpong", MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, 65536) < 0) return 2;
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) return 2;
        m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    }
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
    if (use_memfd) {
        long v = 0;
        if (pread(fd, &v, sizeof v, 0) != sizeof v || v != 400) { say("FAIL: memfd contents\n"); return 1; }
        if (fcntl(fd, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW)) { say("FAIL: memfd seals\n"); return 1; }
        say("memfd ok\n");
    }
    say("done\n");
    return 0;
}
