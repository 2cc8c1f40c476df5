// memfd_mapped: maps a memfd shared, then closes its fd, so the file is
// reachable only through the mapping (/proc/PID/map_files). Prints "ready",
// then "tick N" every 5 ms so a test can see it carry on.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    int fd = memfd_create("stasis-mapped-only", 0);
    if (fd < 0 || ftruncate(fd, 4096) < 0) return 2;
    volatile long *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 2;
    close(fd);
    printf("ready\n");
    fflush(stdout);
    for (long i = 0;; i++) {
        m[0] = i;
        struct timespec ts = {0, 5000000};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
        printf("tick %ld\n", i);
        fflush(stdout);
    }
}
