// Wait until a SIGUSR1 handler has set *flag. SIGUSR1 is blocked between
// the test of the flag and the wait, so one sent in that gap wakes the
// wait instead of being lost (as it would be with while (!flag) pause()).
#include <signal.h>

static void await_flag(volatile sig_atomic_t *flag)
{
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    while (!*flag) sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}
