// fid_vdso_moved MODE: the program moves ("moved": [vdso] and [vvar]
// mremap'ed elsewhere) or removes ("unmapped", "unmapped-spin": all special
// mappings; with -spin it waits in a busy loop, outside any system call) the
// kernel's special mappings, keeps a copy of the vDSO's bytes, then
// "ready". On SIGUSR1 (after restart) it checks that /proc/self/maps shows
// the same layout and the vDSO holds the same bytes at its new place;
// prints "ok" or "FAIL: <why>", exits 0/1. Only raw system calls after
// the move: glibc's cached vDSO pointers would point at the old place.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static int find(const char *name, unsigned long *start, unsigned long *end)
{
    char line[256];
    int found = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t n = strlen(line), k = strlen(name);
        if (n >= k && !strcmp(line + n - k, name) && line[n - k - 1] == ' ') {
            sscanf(line, "%lx-%lx", start, end);
            found = 1;
        }
    }
    if (f) fclose(f);
    return found;
}

static unsigned char copy[1 << 16];

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    sigset_t usr1, none;
    sigemptyset(&usr1);
    sigemptyset(&none);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);
    unsigned long vs, ve, ws, we, cs, ce;
    if (!find("[vdso]", &vs, &ve) || !find("[vvar]", &ws, &we)) { say("FAIL: no vdso\n"); return 2; }
    int has_clock = find("[vvar_vclock]", &cs, &ce);
    unsigned long want_vdso = 0;
    if (!strcmp(mode, "moved")) {
        // Far from where they were: a reserved range, then moved into it.
        unsigned long len = (ve - vs) + (we - ws) + (has_clock ? ce - cs : 0) + 8 * 4096;
        char *area = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        munmap(area, len);
        char *to = area + 4096;
        if (mremap((void *)ws, we - ws, we - ws, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED) { say("FAIL: move vvar\n"); return 2; }
        to += (we - ws) + 4096;
        if (mremap((void *)vs, ve - vs, ve - vs, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED) { say("FAIL: move vdso\n"); return 2; }
        want_vdso = (unsigned long)to;
        memcpy(copy, to, ve - vs);
    } else if (!strncmp(mode, "unmapped", 8)) {
        munmap((void *)vs, ve - vs);
        munmap((void *)ws, we - ws);
        if (has_clock) munmap((void *)cs, ce - cs);
    } else {
        say("FAIL: usage\n");
        return 2;
    }
    say("ready\n");
    if (!strcmp(mode, "unmapped-spin")) {
        sigprocmask(SIG_UNBLOCK, &usr1, NULL);
        while (!go) ;
    }
    while (!go) sigsuspend(&none);
    unsigned long s2, e2;
    int ok = 1;
    if (want_vdso) {
        if (!find("[vdso]", &s2, &e2) || s2 != want_vdso || e2 - s2 != ve - vs) { say("FAIL: vdso not where it was moved\n"); ok = 0; }
        else if (memcmp(copy, (void *)s2, e2 - s2)) { say("FAIL: vdso bytes\n"); ok = 0; }
    } else {
        if (find("[vdso]", &s2, &e2) || find("[vvar]", &s2, &e2) || find("[vvar_vclock]", &s2, &e2)) { say("FAIL: special mapping back\n"); ok = 0; }
    }
    if (ok) say("ok\n");
    return !ok;
}
