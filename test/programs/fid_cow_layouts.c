// fid_cow_layouts: pages shared copy-on-write between a parent, its child
// and a grandchild, in layouts where the processes' address spaces differ
// after the fork. Each process records a checksum of every range it maps,
// then "ready" (from the parent, once all three are set up); on SIGUSR1
// (after restart) each checks its ranges again, the parent passes the
// signal down, and each prints "<who> ok" or "FAIL: <who> <range>" and
// exits 0/1 (a parent exits 1 as well when its child failed).
//
// Layouts, each region 32 pages (R_THP 4 MiB), filled before the fork:
//  written    parent writes pages 0-3, child 4-7, grandchild 8-11 after the fork
//  split      child mprotects pages 8-15 read-only, parent 16-23
//  moved      the child moves the region (mremap) and maps other data at the
//             old address: the same frames at another address
//  swapped    the child swaps the two halves of the region (mremap via a
//             temporary address): frame at X in the parent is at X+16p in the child
//  dontfork   pages 8-15 MADV_DONTFORK before the fork: a hole in the child,
//             which maps fresh memory there
//  unmapped   the child unmaps pages 12-19
//  zero       only read before the fork (zero page), the child writes 2 pages
//  thp        4 MiB with MADV_HUGEPAGE, the child writes one byte in one page
//  file       private file mapping, parent wrote page 1 before the fork,
//             the child writes page 2 afterwards
//  pmoved     the parent moves its copy after the fork; the child keeps it
//  shared     shared anonymous memory (MAP_SHARED), split in three by an
//             mprotect before the fork; after it the child unmaps pages 0-3
//             and moves pages 16-23, the parent unmaps pages 28-31. After
//             the checks the child writes a marker in page 20 and the
//             parent must see it: one object, still shared.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL
#define NP 32UL
#define RS (NP * PG)
#define THP (4UL << 20)

struct range { const char *name; unsigned char *addr; size_t len; uint64_t sum; };
static struct range ranges[64];
static int nranges;
static volatile sig_atomic_t go;
static const char *who = "parent";

static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static void onusr1(int s) { (void)s; go = 1; }

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static void track(const char *name, void *addr, size_t len)
{
    ranges[nranges++] = (struct range){ name, addr, len, 0 };
}

static void fill(unsigned char *p, size_t len, unsigned seed)
{
    uint64_t *w = (uint64_t *)p;
    for (size_t i = 0; i < len / 8; i++) w[i] = (i + 1) * 0x9e3779b97f4a7c15ULL ^ seed;
}

static unsigned char *anon(size_t len)
{
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { say("FAIL: mmap\n"); _exit(2); }
    return p;
}

static void record(void) { for (int i = 0; i < nranges; i++) ranges[i].sum = fnv(ranges[i].addr, ranges[i].len); }

static int check(void)
{
    int ok = 1;
    char buf[128];
    for (int i = 0; i < nranges; i++) {
        if (fnv(ranges[i].addr, ranges[i].len) != ranges[i].sum) {
            snprintf(buf, sizeof buf, "FAIL: %s %s\n", who, ranges[i].name);
            say(buf);
            ok = 0;
        }
    }
    return ok;
}

static void wait_go(void)
{
    sigset_t none;
    sigemptyset(&none);
    while (!go) sigsuspend(&none);
}

int main(int argc, char **argv)
{
    const char *file = argc > 1 ? argv[1] : "cowfile";
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);

    unsigned char *written = anon(RS), *split = anon(RS), *moved = anon(RS), *swapped = anon(RS);
    unsigned char *dontfork = anon(RS), *unmapped = anon(RS), *zero = anon(RS), *pmoved = anon(RS);
    // 2 MiB aligned, for a huge page.
    unsigned char *thpraw = anon(THP + (2UL << 20));
    unsigned char *thp = (unsigned char *)(((uintptr_t)thpraw + (2UL << 20) - 1) & ~((2UL << 20) - 1));
    madvise(thp, THP, MADV_HUGEPAGE);
    unsigned char *spare = anon(4 * RS); // reserved addresses for the moves
    munmap(spare, 4 * RS);
    unsigned char *shared = mmap(NULL, RS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return 2;
    fill(shared, RS, 41);
    mprotect(shared + 8 * PG, 8 * PG, PROT_READ);
    fill(written, RS, 1); fill(split, RS, 2); fill(moved, RS, 3); fill(swapped, RS, 4);
    fill(dontfork, RS, 5); fill(unmapped, RS, 6); fill(thp, THP, 7); fill(pmoved, RS, 9);
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < RS; i += PG) sink += zero[i];
    (void)sink;
    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char page[PG];
    for (int i = 0; i < 4; i++) { memset(page, 'a' + i, PG); (void)!write(fd, page, PG); }
    unsigned char *fmap = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    fmap[PG + 5] = 'X';
    madvise(dontfork + 8 * PG, 8 * PG, MADV_DONTFORK);

    int up[2];
    if (pipe(up) < 0) return 2;
    pid_t child = fork();
    if (child == 0) {
        who = "child";
        fill(written + 4 * PG, 4 * PG, 11);
        mprotect(split + 8 * PG, 8 * PG, PROT_READ);
        unsigned char *to = mremap(moved, RS, RS, MREMAP_MAYMOVE | MREMAP_FIXED, spare);
        unsigned char *again = mmap(moved, RS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        fill(again, RS, 13);
        mremap(swapped + 16 * PG, 16 * PG, 16 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, spare + RS);
        mremap(swapped, 16 * PG, 16 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, swapped + 16 * PG);
        mremap(spare + RS, 16 * PG, 16 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, swapped);
        unsigned char *hole = mmap(dontfork + 8 * PG, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        fill(hole, 8 * PG, 15);
        munmap(unmapped + 12 * PG, 8 * PG);
        fill(zero + 3 * PG, 2 * PG, 17);
        thp[5 * PG + 7] ^= 0xff;
        fmap[2 * PG + 9] = 'Y';
        munmap(shared, 4 * PG);
        unsigned char *smoved = mremap(shared + 16 * PG, 8 * PG, 8 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, spare + 3 * RS);
        track("shared-lo", shared + 4 * PG, 12 * PG); track("shared-moved", smoved, 8 * PG); track("shared-hi", shared + 24 * PG, 8 * PG);
        track("written", written, RS); track("split", split, RS); track("moved", to, RS); track("moved-old", again, RS);
        track("swapped", swapped, RS); track("dontfork-lo", dontfork, 8 * PG); track("dontfork-hole", hole, 8 * PG);
        track("dontfork-hi", dontfork + 16 * PG, 16 * PG); track("unmapped-lo", unmapped, 12 * PG);
        track("unmapped-hi", unmapped + 20 * PG, 12 * PG); track("zero", zero, RS); track("thp", thp, THP);
        track("file", fmap, 4 * PG); track("pmoved", pmoved, RS);
        int down[2];
        if (pipe(down) < 0) _exit(2);
        pid_t grand = fork();
        if (grand == 0) {
            who = "grandchild";
            fill(written + 8 * PG, 4 * PG, 21);
            fill(swapped + 2 * PG, PG, 23);
            record();
            (void)!write(down[1], "g", 1);
            wait_go();
            _exit(check() ? (say("grandchild ok\n"), 0) : 1);
        }
        char c;
        (void)!read(down[0], &c, 1);
        record();
        (void)!write(up[1], "c", 1);
        wait_go();
        int ok = check();
        kill(grand, SIGUSR1);
        int st;
        waitpid(grand, &st, 0);
        memcpy(smoved + 4 * PG, "marker", 6); // page 20 of the object
        if (ok) say("child ok\n");
        _exit(ok && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1);
    }
    fill(written, 4 * PG, 31);
    mprotect(split + 16 * PG, 8 * PG, PROT_READ);
    unsigned char *pto = mremap(pmoved, RS, RS, MREMAP_MAYMOVE | MREMAP_FIXED, spare + 2 * RS);
    munmap(shared + 28 * PG, 4 * PG);
    track("shared", shared, 28 * PG);
    track("written", written, RS); track("split", split, RS); track("moved", moved, RS); track("swapped", swapped, RS);
    track("dontfork", dontfork, RS); track("unmapped", unmapped, RS); track("zero", zero, RS); track("thp", thp, THP);
    track("file", fmap, 4 * PG); track("pmoved", pto, RS);
    char c;
    (void)!read(up[0], &c, 1);
    record();
    say("ready\n");
    wait_go();
    int ok = check();
    kill(child, SIGUSR1);
    int st;
    waitpid(child, &st, 0);
    if (memcmp(shared + 20 * PG, "marker", 6)) {
        say("FAIL: parent does not see the child's write to shared memory\n");
        ok = 0;
    }
    if (ok) say("parent ok\n");
    return ok && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
