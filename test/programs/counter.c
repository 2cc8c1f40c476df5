// counter.c [MAX]
//
// Demo sample: prints "counter: N" every 300 ms, starting at 1, forever or
// until N == MAX.  Prints nothing else (no "ready").
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms)
{
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            break;
        req = rem;
    }
}

int main(int argc, char **argv)
{
    long max = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    for (long n = 1; max <= 0 || n <= max; n++) {
        printf("counter: %ld\n", n);
        fflush(stdout);
        if (max > 0 && n == max)
            break;
        sleep_ms(300);
    }
    return 0;
}
