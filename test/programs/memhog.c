// memhog.c MIB
//
// Checkpoint/restart target with a large private anonymous mapping: every
// 8-byte word of MIB MiB holds a non-zero pattern derived from its page and
// word index.  Prints "ready", then waits in pause(); on SIGUSR1 it verifies
// the whole region and prints "verified" (exit 0) or "FAIL: page N" (exit 1).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096u
#define WPP (PAGE / 8)

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static uint64_t pattern(size_t page, size_t word)
{
    return 0xc0ffee0000000000ULL | ((uint64_t)page << 9) | word;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MIB\n", argv[0]);
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    size_t size = mib << 20;
    size_t pages = size / PAGE;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        printf("FAIL: sigaction\n");
        fflush(stdout);
        return 1;
    }

    uint64_t *mem = mmap(NULL, size ? size : PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        printf("FAIL: mmap %s\n", strerror(errno));
        fflush(stdout);
        return 1;
    }
    for (size_t p = 0; p < pages; p++)
        for (size_t w = 0; w < WPP; w++)
            mem[p * WPP + w] = pattern(p, w);

    printf("ready\n");
    fflush(stdout);
    while (!got_usr1)
        pause();

    for (size_t p = 0; p < pages; p++) {
        for (size_t w = 0; w < WPP; w++) {
            if (mem[p * WPP + w] != pattern(p, w)) {
                printf("FAIL: page %zu\n", p);
                fflush(stdout);
                return 1;
            }
        }
    }
    printf("verified\n");
    fflush(stdout);
    return 0;
}
