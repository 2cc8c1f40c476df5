// cow: the parent fills 16 MiB of private anonymous memory and forks; the
// child rewrites its first 1 MiB; the rest stays shared copy-on-write.
// Both check their memory every 10 ms for 200 rounds ("ready" from the
// parent once the child has written), then the child exits 0 and the
// parent prints "parent ok", reaps it and prints "child ok", "done".
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE (16UL << 20)
#define MIB (1UL << 20)

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static int check(const unsigned long *m, int child)
{
    for (unsigned long i = 0; i < SIZE / sizeof *m; i++) {
        unsigned long want = (child && i < MIB / sizeof *m) ? ~i : i * 2654435761UL;
        if (m[i] != want) return 0;
    }
    return 1;
}

int main(void)
{
    unsigned long *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile int *flag = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || flag == MAP_FAILED) return 2;
    for (unsigned long i = 0; i < SIZE / sizeof *m; i++) m[i] = i * 2654435761UL;
    pid_t child = fork();
    if (child == 0) {
        for (unsigned long i = 0; i < MIB / sizeof *m; i++) m[i] = ~i;
        *flag = 1;
        for (int r = 0; r < 200; r++) {
            if (!check(m, 1)) _exit(1);
            nap(10000000);
        }
        _exit(0);
    }
    while (!*flag) nap(1000000);
    say("ready\n");
    int ok = 1;
    for (int r = 0; r < 200; r++) {
        ok &= check(m, 0);
        nap(10000000);
    }
    say(ok ? "parent ok\n" : "FAIL: parent memory\n");
    int st;
    waitpid(child, &st, 0);
    say(WIFEXITED(st) && WEXITSTATUS(st) == 0 ? "child ok\n" : "FAIL: child memory\n");
    say("done\n");
    return 0;
}
