// fid_refuse_mem MODE: memory state stasis refuses by name, then "ready"
// and "tick N" every 20 ms so a test sees it keep running.
//   uffd     a range registered with userfaultfd (missing-page mode)
//   clonevm  a child process made with clone(CLONE_VM): one mm, two processes
//   mbind    a range with NUMA policy MPOL_BIND to node 0 (mbind)
//   mbind-many  the same among 100 more small mappings (then numa_maps
//            is read first, not each VMA asked)
//   mempolicy  the task's NUMA policy MPOL_PREFERRED node 0 (set_mempolicy)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static int sleeper(void *arg)
{
    (void)arg;
    for (;;) pause();
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "uffd")) {
        int uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
        if (uffd < 0) { say("FAIL: userfaultfd\n"); return 2; }
        struct uffdio_api api = { .api = UFFD_API };
        if (ioctl(uffd, UFFDIO_API, &api)) { say("FAIL: UFFDIO_API\n"); return 2; }
        void *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        struct uffdio_register reg = { .range = { (unsigned long)p, 1 << 16 }, .mode = UFFDIO_REGISTER_MODE_MISSING };
        if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { say("FAIL: UFFDIO_REGISTER\n"); return 2; }
    } else if (!strcmp(mode, "clonevm")) {
        char *stack = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (clone(sleeper, stack + (1 << 16), CLONE_VM | SIGCHLD, NULL) < 0) { say("FAIL: clone\n"); return 2; }
    } else if (!strcmp(mode, "mbind") || !strcmp(mode, "mbind-many")) {
        unsigned long node0 = 1;
        // Alternating protections: 100 VMAs that cannot merge.
        for (int i = 0; mode[5] && i < 100; i++) {
            char *q = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (q == MAP_FAILED || mprotect(q + 4096, 4096, PROT_READ)) { say("FAIL: mmap\n"); return 2; }
        }
        void *p = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (syscall(SYS_mbind, p, 1 << 16, 2 /* MPOL_BIND */, &node0, 2, 0)) { say("FAIL: mbind\n"); return 2; }
    } else if (!strcmp(mode, "mempolicy")) {
        unsigned long node0 = 1;
        if (syscall(SYS_set_mempolicy, 1 /* MPOL_PREFERRED */, &node0, 2)) { say("FAIL: set_mempolicy\n"); return 2; }
    } else {
        say("FAIL: usage\n");
        return 2;
    }
    say("ready\n");
    for (int i = 0;; i++) {
        char b[32];
        snprintf(b, sizeof b, "tick %d\n", i);
        say(b);
        struct timespec ts = { 0, 20000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
    }
}
