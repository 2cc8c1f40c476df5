// fid_large_mix FILE [fork]: two 16 MiB mappings (large enough that a
// checkpoint reads their pagemaps ahead, on a thread of its own) holding
// every kind of page side by side, then "ready". On SIGUSR1 (after
// restart) it checks every page and prints "ok" or "FAIL: <what>", exits 0/1.
//   anon  written stretches, untouched stretches, pages only read (the
//         shared zero page), guard pages, and every third page written
//         among untouched ones (stretches of one page)
//   file  a private mapping of FILE: pages only read (file pages), pages
//         written (private copies), pages untouched
//   small 6 MiB (its pagemap read in the checkpoint's own thread): written
//         pages, 768 untouched ones (a whole 512-entry stretch of nothing
//         among them), then every fifth page written, the last one too
// With "fork", a child then shares the anon pages copy-on-write and the
// parent rewrites some of them: pages mapped twice, and pages that became
// each one's own. The parent passes SIGUSR1 on and reports for both.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "await_flag.h"
#include "touch_fault.h"

#define PG 4096UL
#define NP 4096UL
#define SP 1536UL
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static volatile sig_atomic_t go;
static int failed;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void fail(const char *what, unsigned long page)
{
    char line[128];
    snprintf(line, sizeof line, "FAIL: %s page %lu\n", what, page);
    say(line);
    failed = 1;
}

/** The byte page i is filled with under seed s: never 0. */
static unsigned char val(unsigned long i, int s) { return (unsigned char)((i * 7 + (unsigned long)s) % 255 + 1); }

static void fill(unsigned char *p, unsigned long i, int s) { memset(p + i * PG, val(i, s), PG); }

static int holds(const unsigned char *p, unsigned long i, unsigned char v)
{
    for (unsigned long k = 0; k < PG; k++) if (p[i * PG + k] != v) return 0;
    return 1;
}

enum { A = 1, B = 2, C = 3 };

/** What anon page i holds: a seed, 0 (zeros), or -1 (a guard page). */
static int anonSeed(unsigned long i, int parent)
{
    if (i >= 1500 && i < 1504) return -1;
    if (i < 500) return parent && i < 250 ? B : A;
    if (i < 1500) return 0;
    if (i < 2048) return A;
    if (parent && i % 6 == 0) return B;
    return i % 3 == 0 ? A : 0;
}

/** Whether page i of the small mapping was written. */
static int smallWritten(unsigned long i) { return i < 256 || (i >= 1024 && (i % 5 == 0 || i == SP - 1)); }

static void check(unsigned char *anon, unsigned char *file, unsigned char *small, int parent, int forked)
{
    for (unsigned long i = 0; i < SP; i++) {
        if (!holds(small, i, smallWritten(i) ? val(i, A) : 0)) fail("small", i);
    }
    for (unsigned long i = 0; i < NP; i++) {
        int s = anonSeed(i, parent && forked);
        if (s < 0) {
            if (touch(anon + i * PG) != SIGSEGV) fail("anon guard readable", i);
        } else if (!holds(anon, i, s ? val(i, s) : 0)) {
            fail(s ? "anon data" : "anon zeros", i);
        }
        if (!holds(file, i, i % 4 == 2 ? val(i, C) : (unsigned char)((i * 5 + 3) % 255 + 1))) fail("file page", i);
    }
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "data";
    int forked = argc > 2 && strcmp(argv[2], "fork") == 0;
    signal(SIGUSR1, onusr1);
    signal(SIGSEGV, onfault);

    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char page[PG];
    for (unsigned long i = 0; i < NP; i++) {
        memset(page, (i * 5 + 3) % 255 + 1, PG);
        (void)!write(fd, page, PG);
    }
    unsigned char *file = mmap(NULL, NP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    unsigned char *anon = mmap(NULL, NP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // Read-only pages on both sides: a VMA of its own, merged with nothing.
    unsigned char *small = mmap(NULL, (SP + 2) * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (file == MAP_FAILED || anon == MAP_FAILED || small == MAP_FAILED) { say("FAIL: mmap\n"); return 2; }
    mprotect(small, PG, PROT_READ);
    mprotect(small + (SP + 1) * PG, PG, PROT_READ);
    small += PG;
    madvise(small, SP * PG, MADV_NOHUGEPAGE);
    for (unsigned long i = 0; i < SP; i++) if (smallWritten(i)) fill(small, i, A);
    // No huge pages: the kinds of page must sit side by side.
    madvise(anon, NP * PG, MADV_NOHUGEPAGE);
    volatile unsigned char sink = 0;
    for (unsigned long i = 0; i < NP; i++) {
        if (i % 4 == 1) sink += file[i * PG];
        if (i % 4 == 2) fill(file, i, C);
        int s = anonSeed(i, 0);
        if (s > 0) fill(anon, i, s);
        else if (i >= 1000 && i < 1500) sink += anon[i * PG];
    }
    if (madvise(anon + 1500 * PG, 4 * PG, MADV_GUARD_INSTALL)) { say("FAIL: guard install\n"); return 2; }

    pid_t child = 0;
    if (forked) {
        child = fork();
        if (child == 0) {
            await_flag(&go);
            check(anon, file, small, 0, 1);
            _exit(failed);
        }
        for (unsigned long i = 0; i < NP; i++) if (anonSeed(i, 1) == B) fill(anon, i, B);
    }
    say("ready\n");
    await_flag(&go);
    check(anon, file, small, 1, forked);
    if (child) {
        int st;
        kill(child, SIGUSR1);
        if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) { say("FAIL: the child's pages\n"); failed = 1; }
    }
    say(failed ? "" : "ok\n");
    return failed;
}
