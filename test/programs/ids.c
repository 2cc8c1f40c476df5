// ids.c MODE [MIB]
//
// Checkpoint/restart target for ordinary users: what the program itself sees
// of its ids before and after a restart.
//   mem MIB: fills MIB MiB of anonymous memory from a PRNG, prints
//     "mem pid P ppid Q uid U gid G self S" (S: what /proc/self names) and
//     "ready"; on SIGUSR1 prints the ids line
//     again and "verified SUM" once every word checks (or "FAIL: ...").
//   tree: makes a pipe, writes "hello from P" into it (left in flight),
//     forks a child; both print "pid ..." lines and the parent "ready" once
//     the child has printed. On SIGUSR1 the child prints its ids again and
//     what it reads from the pipe, then exits 0; the parent, woken by
//     SIGUSR1 too, prints its ids, reaps the child ("child exited N") and
//     exits with status 7.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t woken;
static void on_usr1(int sig) { (void)sig; woken = 1; }

/* The ids, and the pid /proc/self names (the /proc of its pid namespace or not). */
static void ids(const char *who)
{
    char self[32] = "?";
    ssize_t n = readlink("/proc/self", self, sizeof self - 1);
    if (n > 0) self[n] = 0;
    printf("%s pid %d ppid %d uid %d gid %d self %s\n", who, getpid(), getppid(), getuid(), getgid(), self);
    fflush(stdout);
}

static void wait_usr1(void)
{
    sigset_t none;
    sigemptyset(&none);
    while (!woken) sigsuspend(&none);
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, on_usr1);
    if (argc >= 3 && strcmp(argv[1], "mem") == 0) {
        size_t words = (size_t)atoi(argv[2]) << 17;
        uint64_t *m = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) { printf("FAIL: mmap\n"); return 1; }
        uint64_t s = 0x9e3779b97f4a7c15ull, sum = 0;
        for (size_t i = 0; i < words; i++) sum += m[i] = next(&s);
        ids("mem");
        printf("ready\n");
        fflush(stdout);
        wait_usr1();
        ids("mem");
        s = 0x9e3779b97f4a7c15ull;
        uint64_t check = 0;
        for (size_t i = 0; i < words; i++) {
            if (m[i] != next(&s)) { printf("FAIL: word %zu\n", i); return 1; }
            check += m[i];
        }
        if (check != sum) { printf("FAIL: sum\n"); return 1; }
        printf("verified %016llx\n", (unsigned long long)check);
        fflush(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "tree") == 0) {
        int p[2], ok[2];
        if (pipe(p) < 0 || pipe(ok) < 0) { printf("FAIL: pipe\n"); return 1; }
        char msg[64];
        int n = snprintf(msg, sizeof msg, "hello from %d", getpid());
        if (write(p[1], msg, n) != n) { printf("FAIL: write\n"); return 1; }
        pid_t child = fork();
        if (child < 0) { printf("FAIL: fork\n"); return 1; }
        if (child == 0) {
            close(p[1]);
            close(ok[0]);
            ids("child");
            close(ok[1]);
            wait_usr1();
            ids("child");
            char got[64] = {0};
            ssize_t r = read(p[0], got, sizeof got - 1);
            printf("child read %s\n", r > 0 ? got : "nothing");
            fflush(stdout);
            _exit(0);
        }
        close(p[0]);
        close(ok[1]);
        char c;
        while (read(ok[0], &c, 1) > 0) {} // EOF: the child has printed
        close(ok[0]);
        ids("parent");
        printf("ready\n");
        fflush(stdout);
        wait_usr1();
        ids("parent");
        int st;
        if (waitpid(child, &st, 0) != child) { printf("FAIL: waitpid\n"); return 1; }
        printf("child exited %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        fflush(stdout);
        return 7;
    }
    fprintf(stderr, "usage: %s mem MIB | tree\n", argv[0]);
    return 2;
}
