// forker: forks a child every 20 ms forever; each child sleeps 200 ms and
// exits; the parent reaps without blocking. "ready" after the first fork.
// Used to check that a checkpoint catches forks racing with the freeze.
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

int main(void)
{
    for (int i = 0;; i++) {
        pid_t p = fork();
        if (p == 0) {
            nap(200000000);
            _exit(0);
        }
        if (i == 0) (void)!write(1, "ready\n", 6);
        while (waitpid(-1, NULL, WNOHANG) > 0) ;
        nap(20000000);
    }
}
