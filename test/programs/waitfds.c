// waitfds: a signalfd for SIGUSR1 (blocked), a one-shot 1.5 s timerfd and
// a 50 ms periodic one left unread for 200 ms. Prints "ready", then blocks
// reading the signalfd until SIGUSR1 comes: "signalfd ok"; then the
// one-shot must fire no earlier than 1.5 s after it was armed: "timerfd
// ok"; the periodic one must hold expirations: "periodic ok".
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC);
    int once = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    int every = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (sfd < 0 || once < 0 || every < 0) return 2;
    struct itimerspec one = {{0, 0}, {1, 500000000}}, periodic = {{0, 50000000}, {0, 50000000}};
    double armed = now();
    if (timerfd_settime(once, 0, &one, NULL) < 0 || timerfd_settime(every, 0, &periodic, NULL) < 0) return 2;
    struct timespec pause200 = {0, 200000000};
    while (nanosleep(&pause200, &pause200) < 0 && errno == EINTR) ;
    say("ready\n");
    struct signalfd_siginfo si;
    ssize_t n;
    while ((n = read(sfd, &si, sizeof si)) < 0 && errno == EINTR) ;
    if (n != sizeof si || si.ssi_signo != SIGUSR1) { say("FAIL: signalfd\n"); return 1; }
    say("signalfd ok\n");
    uint64_t count = 0;
    while ((n = read(once, &count, 8)) < 0 && errno == EINTR) ;
    if (n != 8 || count != 1 || now() - armed < 1.5) { say("FAIL: one-shot timer\n"); return 1; }
    say("timerfd ok\n");
    if (read(every, &count, 8) != 8 || count < 1) { say("FAIL: periodic timer\n"); return 1; }
    say("periodic ok\n");
    return 0;
}
