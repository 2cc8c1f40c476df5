// fid_vmflags [future|ksm]: one region per VMA flag that madvise, mlock,
// mmap flags and mseal leave on a mapping, each filled with its own data,
// then "ready". With "future", mlockall(MCL_FUTURE | MCL_ONFAULT) last;
// with "ksm", prctl(PR_SET_MEMORY_MERGE) first and the "nohugepage"
// region made unmergeable again (MADV_UNMERGEABLE). On
// SIGUSR1 (after restart) it checks the contents and the behaviour each
// flag gives: guard pages fault, a sealed range refuses mprotect, a forked
// child sees wipe-on-fork memory zeroed and don't-fork memory absent, new
// mappings are locked under mlockall; prints "ok" or one "FAIL: <what>"
// line per difference, exits 0/1.
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096UL
#define NP 16UL
#define RS (NP * PG)
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

enum { WIPE, DONTFORK, DONTDUMP, HUGE, NOHUGE, MERGE, LOCKED, ONFAULT, MAPLOCKED, SEQ, RAND, NORESERVE, RONLY, GUARD, SEALED, DROP, UNGUARDED, NREG };
static const char *names[NREG] = { "wipeonfork", "dontfork", "dontdump", "hugepage", "nohugepage", "mergeable", "mlock", "mlock-onfault", "map-locked", "sequential", "random", "noreserve", "read-only-once-written", "guard", "sealed", "droppable", "guard-removed" };
static unsigned char *reg[NREG];
static uint64_t sums[NREG];
static size_t lens[NREG];
static volatile sig_atomic_t go;
static sigjmp_buf jb;
static int failed;

static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static void fail(const char *what, const char *why)
{
    char b[160];
    snprintf(b, sizeof b, "FAIL: %s %s\n", what, why);
    say(b);
    failed = 1;
}
static void onusr1(int s) { (void)s; go = 1; }
static void onsegv(int s) { (void)s; siglongjmp(jb, 1); }

static uint64_t fnv(const unsigned char *p, size_t n, size_t skip_from, size_t skip_to)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        if (i >= skip_from && i < skip_to) continue;
        h = (h ^ p[i]) * 1099511628211ULL;
    }
    return h;
}

static unsigned char *map(size_t len, int flags)
{
    // A PROT_NONE page on each side keeps neighbours from merging.
    unsigned char *p = mmap(NULL, len + 2 * PG, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { say("FAIL: mmap\n"); exit(2); }
    p = mmap(p + PG, len, PROT_READ | PROT_WRITE, flags | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) { say("FAIL: mmap fixed\n"); exit(2); }
    return p;
}

static void fill(int r)
{
    for (size_t i = 0; i < lens[r]; i += 8) *(uint64_t *)(reg[r] + i) = (i + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)r;
}

static size_t guard_lo(int r) { return r == GUARD ? 4 * PG : 0; }
static size_t guard_hi(int r) { return r == GUARD ? 8 * PG : 0; }

int main(int argc, char **argv)
{
    int future = argc > 1 && !strcmp(argv[1], "future");
    int ksm = argc > 1 && !strcmp(argv[1], "ksm");
    if (ksm && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0)) fail("PR_SET_MEMORY_MERGE", strerror(errno));
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);
    for (int r = 0; r < NREG; r++) {
        lens[r] = r == HUGE || r == NOHUGE ? (4UL << 20) : RS;
        int flags = MAP_PRIVATE | MAP_ANONYMOUS;
        if (r == MAPLOCKED) flags |= MAP_LOCKED;
        if (r == NORESERVE) flags |= MAP_NORESERVE;
        if (r == DROP) flags = MAP_DROPPABLE | MAP_ANONYMOUS;
        reg[r] = map(lens[r], flags);
    }
    madvise(reg[WIPE], RS, MADV_WIPEONFORK);
    madvise(reg[DONTFORK], RS, MADV_DONTFORK);
    madvise(reg[DONTDUMP], RS, MADV_DONTDUMP);
    madvise(reg[HUGE], lens[HUGE], MADV_HUGEPAGE);
    madvise(reg[NOHUGE], lens[NOHUGE], MADV_NOHUGEPAGE);
    if (ksm && madvise(reg[NOHUGE], lens[NOHUGE], MADV_UNMERGEABLE)) fail("MADV_UNMERGEABLE", strerror(errno));
    madvise(reg[MERGE], RS, MADV_MERGEABLE);
    madvise(reg[SEQ], RS, MADV_SEQUENTIAL);
    madvise(reg[RAND], RS, MADV_RANDOM);
    for (int r = 0; r < NREG; r++) {
        if (r == ONFAULT) continue;
        fill(r);
    }
    if (mlock(reg[LOCKED], RS)) fail("mlock", strerror(errno));
    if (syscall(SYS_mlock2, reg[ONFAULT], RS, MLOCK_ONFAULT)) fail("mlock2", strerror(errno));
    for (size_t i = 0; i < RS / 2; i++) reg[ONFAULT][i] = (unsigned char)(i * 7); // half faulted in
    mprotect(reg[RONLY], RS, PROT_READ);
    if (madvise(reg[GUARD] + 4 * PG, 4 * PG, MADV_GUARD_INSTALL)) fail("guard install", strerror(errno));
    if (madvise(reg[UNGUARDED] + 2 * PG, PG, MADV_GUARD_INSTALL) || madvise(reg[UNGUARDED] + 2 * PG, PG, MADV_GUARD_REMOVE)) fail("guard remove", strerror(errno));
    reg[UNGUARDED][2 * PG] = 1;
    if (syscall(462, reg[SEALED], RS, 0)) fail("mseal", strerror(errno));
    // VM_ACCOUNT ("ac") on a PROT_NONE page split off memory that was written.
    unsigned char *acc = map(2 * PG, MAP_PRIVATE | MAP_ANONYMOUS);
    acc[PG] = 1;
    if (mprotect(acc, PG, PROT_NONE)) fail("mprotect", strerror(errno));
    for (int r = 0; r < NREG; r++) sums[r] = fnv(reg[r], lens[r], guard_lo(r), guard_hi(r));
    if (future && mlockall(MCL_FUTURE | MCL_ONFAULT)) fail("mlockall", strerror(errno));
    say(failed ? "FAIL: setup\n" : "ready\n");
    sigset_t none;
    sigemptyset(&none);
    while (!go) sigsuspend(&none);

    for (int r = 0; r < NREG; r++) {
        if (r == DROP) continue; // the kernel may drop those pages at any time
        if (fnv(reg[r], lens[r], guard_lo(r), guard_hi(r)) != sums[r]) fail(names[r], "contents");
    }
    signal(SIGSEGV, onsegv);
    if (!sigsetjmp(jb, 1)) {
        volatile unsigned char c = reg[GUARD][5 * PG];
        (void)c;
        fail("guard", "page readable");
    }
    signal(SIGSEGV, SIG_DFL);
    if (mprotect(reg[SEALED], RS, PROT_READ) == 0 || errno != EPERM) fail("sealed", "mprotect allowed");
    pid_t child = fork();
    if (child == 0) {
        int bad = 0;
        for (size_t i = 0; i < RS; i++) bad |= reg[WIPE][i];
        if (madvise(reg[DONTFORK], RS, MADV_NORMAL) == 0 || errno != ENOMEM) bad |= 2;
        if (fnv(reg[DONTDUMP], RS, 0, 0) != sums[DONTDUMP]) bad |= 4;
        _exit(bad);
    }
    int st;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) & 1) fail("wipeonfork", "not wiped in a child");
    if (!WIFEXITED(st) || WEXITSTATUS(st) & 2) fail("dontfork", "present in a child");
    if (!WIFEXITED(st) || WEXITSTATUS(st) & 4) fail("dontdump", "child copy");
    if (ksm && prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) != 1) fail("ksm", "merge-any lost");
    if (future) {
        unsigned char *n = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        char line[256];
        FILE *f = fopen("/proc/self/smaps", "r");
        int in = 0, locked = 0;
        while (f && fgets(line, sizeof line, f)) {
            unsigned long a, b;
            if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') == line + strspn(line, "0123456789abcdef")) in = a == (unsigned long)n;
            else if (in && !strncmp(line, "VmFlags:", 8)) locked = strstr(line, " lo ") && strstr(line, " lf ");
        }
        if (f) fclose(f);
        if (!locked) fail("mlockall", "new mapping not locked on fault");
    }
    say(failed ? "" : "ok\n");
    return failed;
}
