// Whether touching a byte faults: touch() gives the signal a read of it
// raises (SIGSEGV, SIGBUS), or 0. The program installs onfault for the
// signals it expects (signal(SIGSEGV, onfault)); it jumps back into touch.
#include <setjmp.h>
#include <signal.h>

static sigjmp_buf touch_jb;
static void onfault(int s) { siglongjmp(touch_jb, s); }

static int touch(volatile unsigned char *p)
{
    int sig = sigsetjmp(touch_jb, 1);
    if (sig) return sig;
    (void)*p;
    return 0;
}
