// eventfd: holds a semaphore eventfd at 3 (non-blocking, close-on-exec) and
// a plain one at 2^40, prints "ready" and waits for SIGUSR1; then the first
// must give 1, 1, 1 and EAGAIN, the second 2^40: "eventfd ok".
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
    int big = eventfd(0, 0);
    uint64_t v = 1ULL << 40;
    if (sem < 0 || big < 0 || write(big, &v, 8) != 8) return 2;
    say("ready\n");
    await_flag(&go);
    for (int i = 0; i < 3; i++) {
        if (read(sem, &v, 8) != 8 || v != 1) { say("FAIL: semaphore read\n"); return 1; }
    }
    if (read(sem, &v, 8) != -1 || errno != EAGAIN) { say("FAIL: semaphore not empty or blocking\n"); return 1; }
    if (!(fcntl(sem, F_GETFD) & FD_CLOEXEC)) { say("FAIL: close-on-exec lost\n"); return 1; }
    if (read(big, &v, 8) != 8 || v != 1ULL << 40) { say("FAIL: counter\n"); return 1; }
    say("eventfd ok\n");
    return 0;
}
