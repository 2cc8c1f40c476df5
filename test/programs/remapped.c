// remapped: anonymous memory moved with mremap right after a neighbour it
// cannot merge with (its page offset is still the one of where it was first
// mapped), so the two are separate VMAs that a restart maps afresh and the
// kernel merges. Fills both with a pattern, prints "ready"; on SIGUSR1
// checks the pattern and prints "ok" (or "FAIL: <why>").
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES 4
#define PAGE 4096

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

int main(void)
{
    size_t len = PAGES * PAGE;
    // A hole of 2*len: the first half stays, the second receives the moved block.
    char *a = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) return 2;
    munmap(a + len, len);
    memset(b, 0x5b, len);
    if (mremap(b, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, a + len) != a + len) return 2;
    memset(a, 0xa5, len);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    while (!go) pause();
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)a[i] != 0xa5 || (unsigned char)a[len + i] != 0x5b) {
            printf("FAIL: byte %zu\n", i);
            return 1;
        }
    }
    printf("ok\n");
    return 0;
}
