// tree: 8 processes in 3 process groups and 2 sessions, with 2 zombies.
//
//   R   session leader (the test starts it with setsid), group R
//   +- A    group R
//   +- B    setpgid(0, 0): group B
//   |  +- B1   group B
//   +- Z1   exits 7 at once; R reaps it only at the end (zombie)
//   +- C    setsid(): session C, group C
//      +- C1   group C
//      +- Z2   exits 9 at once; C reaps it only at the end (zombie)
//
// Setup is counted in a MAP_SHARED|MAP_ANONYMOUS page (no fds are left
// open); R prints "ready" once all five live children are set up and both
// zombies are zombies. Every live process then counts 300 steps, 5 ms
// apart. Children exit with codes that prove what they reaped (A 11, B1 12,
// C1 13, B 21 if B1 gave 12, C 22 if Z2 gave 9 and C1 gave 13); R reaps in a
// fixed order and prints one line each, then "done".
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile int *ready_count;

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static void work(void)
{
    volatile long sum = 0;
    for (int i = 0; i < 300; i++) {
        sum += i;
        nap(5000000);
    }
}

static void set_up(void) { __atomic_add_fetch(ready_count, 1, __ATOMIC_SEQ_CST); }

/* Wait until child is a zombie, without reaping it. */
static void await_zombie(pid_t child)
{
    siginfo_t si;
    while (waitid(P_PID, child, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) ;
}

static int reap(pid_t child)
{
    int st;
    while (waitpid(child, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static pid_t spawn(void (*body)(void))
{
    pid_t p = fork();
    if (p < 0) { say("FAIL: fork\n"); exit(1); }
    if (p == 0) { body(); _exit(0); }
    return p;
}

static void zombie7(void) { _exit(7); }
static void zombie9(void) { _exit(9); }
static void leaf_a(void) { set_up(); work(); _exit(11); }
static void leaf_b1(void) { set_up(); work(); _exit(12); }
static void leaf_c1(void) { set_up(); work(); _exit(13); }

static void node_b(void)
{
    setpgid(0, 0);
    pid_t b1 = spawn(leaf_b1);
    set_up();
    work();
    _exit(reap(b1) == 12 ? 21 : 1);
}

static void node_c(void)
{
    setsid();
    pid_t c1 = spawn(leaf_c1);
    pid_t z2 = spawn(zombie9);
    await_zombie(z2);
    set_up();
    work();
    int z = reap(z2), c = reap(c1);
    _exit(z == 9 && c == 13 ? 22 : 1);
}

int main(void)
{
    ready_count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ready_count == MAP_FAILED) return 2;
    pid_t a = spawn(leaf_a);
    pid_t b = spawn(node_b);
    pid_t z1 = spawn(zombie7);
    pid_t c = spawn(node_c);
    await_zombie(z1);
    while (__atomic_load_n(ready_count, __ATOMIC_SEQ_CST) < 5) nap(1000000);
    /* B1's setpgid happens in B before B1 exists; make sure B's group is in place. */
    while (getpgid(b) != b) nap(1000000);
    say("ready\n");
    work();
    char line[64];
    const char *names[] = {"Z1", "A", "B", "C"};
    pid_t kids[] = {z1, a, b, c};
    for (int i = 0; i < 4; i++) {
        snprintf(line, sizeof line, "reaped %s %d\n", names[i], reap(kids[i]));
        say(line);
    }
    say("done\n");
    return 0;
}
