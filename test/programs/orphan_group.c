// orphan_group: a tree whose member sits in a process group led from
// outside it. The root forks A (its own group), A forks A1 (joins A's group)
// and exits, so A1 is reparented away; the root then forks B, which joins
// A's group, still alive through A1. "ready" once B is in it. A checkpoint
// of the root must refuse B's group by name. Everyone idles until killed;
// A1 ends by itself after 10 s so nothing lingers.
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

int main(void)
{
    pid_t a = fork();
    if (a == 0) {
        setpgid(0, 0);
        if (fork() == 0) {
            nap(10000);
            _exit(0);
        }
        _exit(0);
    }
    setpgid(a, a); /* no race on who sets it first */
    waitpid(a, NULL, 0);
    pid_t b = fork();
    if (b == 0) {
        if (setpgid(0, a) < 0) { (void)!write(1, "FAIL: setpgid\n", 14); _exit(1); }
        for (;;) nap(1000);
    }
    while (getpgid(b) != a) nap(1);
    (void)!write(1, "ready\n", 6);
    for (;;) nap(1000);
}
