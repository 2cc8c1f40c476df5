// fid_unreadable FILE: mappings whose pages cannot all be read, then
// "ready"; on SIGUSR1 (after restart) it checks each one and prints "ok" or
// "FAIL: <what>", exits 0/1.
//   eof      a private and a shared mapping of FILE, 4 pages long, over a
//            file of 1.5 pages: page 0 written (private copy), the part
//            past the end of the file faults with SIGBUS
//   memfd    a shared mapping of a memfd of 4 pages, written, then the
//            memfd truncated to 1 page: the rest faults with SIGBUS
//   none     PROT_NONE memory holding data (written, then mprotect'ed)
//   guard    guard pages (MADV_GUARD_INSTALL) in the middle of written memory
//   cowtrunc a private mapping of FILE whose copied page 3 was dropped by
//            a truncate to 1.5 pages (then the file grows back to 1.5 pages)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "touch_fault.h"

#define PG 4096UL
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static volatile sig_atomic_t go;
static int failed;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static void fail(const char *what) { say("FAIL: "); say(what); say("\n"); failed = 1; }

static void pattern(unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 13 + seed);
}

static int same(const unsigned char *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++) if (p[i] != (unsigned char)(i * 13 + seed)) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    const char *file = argc > 1 ? argv[1] : "data";
    sigset_t usr1, none;
    sigemptyset(&usr1);
    sigemptyset(&none);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);

    int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    unsigned char buf[PG * 2];
    pattern(buf, sizeof buf, 1);
    (void)!write(fd, buf, PG + PG / 2);
    unsigned char *priv = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    unsigned char *shar = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    priv[10] = 'P';
    (void)!ftruncate(fd, 4 * PG);
    unsigned char *cow = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    cow[3 * PG] = 'C';
    cow[0] = 'c';
    (void)!ftruncate(fd, PG + PG / 2);
    close(fd);

    int mfd = memfd_create("trunc", 0);
    (void)!ftruncate(mfd, 4 * PG);
    unsigned char *mem = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    pattern(mem, 4 * PG, 2);
    (void)!ftruncate(mfd, PG);
    close(mfd);

    unsigned char *prot = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pattern(prot, 4 * PG, 3);
    mprotect(prot, 4 * PG, PROT_NONE);

    unsigned char *guard = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    pattern(guard, 8 * PG, 4);
    if (madvise(guard + 2 * PG, 2 * PG, MADV_GUARD_INSTALL)) fail("guard install");

    say("ready\n");
    while (!go) sigsuspend(&none);

    signal(SIGBUS, onfault);
    signal(SIGSEGV, onfault);
    if (priv[10] != 'P' || !same(priv + 11, PG - 11, 11 * 13 + 1) || !same(shar, PG + PG / 2, 1)) fail("eof contents");
    if (touch(priv + 2 * PG) != SIGBUS || touch(shar + 3 * PG) != SIGBUS) fail("eof no SIGBUS");
    if (cow[0] != 'c' || touch(cow + 3 * PG) != SIGBUS) fail("cowtrunc");
    if (!same(mem, PG, 2)) fail("memfd contents");
    if (touch(mem + 2 * PG) != SIGBUS) fail("memfd no SIGBUS");
    if (touch(prot) != SIGSEGV) fail("none readable");
    mprotect(prot, 4 * PG, PROT_READ);
    if (!same(prot, 4 * PG, 3)) fail("none contents");
    if (touch(guard + 2 * PG) != SIGSEGV || touch(guard + 3 * PG) != SIGSEGV) fail("guard readable");
    if (!same(guard, 2 * PG, 4) || !same(guard + 4 * PG, 4 * PG, (int)((4 * PG * 13 + 4) & 0xff))) fail("guard contents");
    if (!failed) say("ok\n");
    return failed;
}
