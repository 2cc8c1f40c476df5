// fuzzseed.c
//
// A small tree holding one of each object the image fuzzer (test/fuzz.test.ts)
// mutates: a child sharing anonymous shared memory with its parent, a pipe
// to it with unread bytes in flight, a zombie child never waited for, a
// memfd (mapped shared and held as an fd), an eventfd with a count and an
// epoll watching it, a deleted /dev/shm file (shm_open, unlinked) held as an
// fd and mapped shared. Prints "ready" once all is set up, then both
// processes wait in pause(); on SIGUSR1 the parent checks its state and
// prints "ok" (or "FAIL: <what>") and exits.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) { (void)sig; got_usr1 = 1; }

static int fail(const char *what)
{
    printf("FAIL: %s\n", what);
    fflush(stdout);
    return 1;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    uint32_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int mfd = memfd_create("fuzzseed", 0);
    if (shared == MAP_FAILED || mfd < 0 || ftruncate(mfd, 8192) < 0) return fail("setup");
    char *mem = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (mem == MAP_FAILED) return fail("memfd mmap");
    strcpy(mem, "memfd contents");
    shared[0] = 0x5eed;
    char shmname[64];
    snprintf(shmname, sizeof shmname, "/stasis-fuzzseed-%d", getpid());
    int gfd = shm_open(shmname, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (gfd < 0 || ftruncate(gfd, 4096) < 0 || shm_unlink(shmname) < 0) return fail("shm_open");
    char *ghost = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, gfd, 0);
    if (ghost == MAP_FAILED) return fail("shm mmap");
    strcpy(ghost, "deleted file contents");
    int efd = eventfd(7, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x1234 };
    if (efd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) < 0) return fail("eventfd/epoll");
    int p[2];
    if (pipe(p) < 0) return fail("pipe");
    pid_t zombie = fork();
    if (zombie == 0) _exit(3);
    pid_t child = fork();
    if (child == 0) {
        close(p[0]);
        if (write(p[1], "in flight", 9) != 9) _exit(1);
        for (;;) pause();
    }
    close(p[1]);
    // Ready once the child's bytes are in the pipe (POLLIN: nothing read)
    // and the zombie has exited (WNOWAIT: left unreaped).
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    if (poll(&pf, 1, -1) != 1) return fail("poll");
    siginfo_t si;
    if (waitid(P_PID, zombie, &si, WEXITED | WNOWAIT) < 0) return fail("waitid");
    printf("ready\n");
    fflush(stdout);
    while (!got_usr1) pause();
    char buf[16] = {0};
    uint64_t count = 0;
    struct epoll_event got;
    if (read(p[0], buf, 9) != 9 || strcmp(buf, "in flight")) return fail("pipe data");
    if (strcmp(mem, "memfd contents")) return fail("memfd");
    if (shared[0] != 0x5eed) return fail("shared memory");
    if (strcmp(ghost, "deleted file contents") || pread(gfd, buf, 7, 0) != 7 || memcmp(buf, "deleted", 7)) return fail("deleted file");
    if (epoll_wait(ep, &got, 1, 0) != 1 || got.data.u64 != 0x1234) return fail("epoll");
    if (read(efd, &count, 8) != 8 || count != 7) return fail("eventfd");
    printf("ok\n");
    fflush(stdout);
    return 0;
}
