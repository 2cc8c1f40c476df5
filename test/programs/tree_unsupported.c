// tree_unsupported: a root and 3 children; the second child holds a netlink
// route socket, which a checkpoint must refuse by name. Each process prints
// "alive <name> <n>" every 100 steps of 5 ms. "ready" once all children run
// (counted in a shared page, so no extra fd is open).
#include <errno.h>
#include <sys/mman.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <time.h>
#include <unistd.h>

static volatile int *started;

static void nap(long ns)
{
    struct timespec ts = {0, ns};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static void loop(const char *name)
{
    char line[64];
    for (long n = 1;; n++) {
        nap(5000000);
        if (n % 100 == 0) {
            int len = snprintf(line, sizeof line, "alive %s %ld\n", name, n);
            (void)!write(1, line, len);
        }
    }
}

int main(void)
{
    started = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (started == MAP_FAILED) return 2;
    const char *names[] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        if (fork() == 0) {
            if (i == 1 && socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) < 0) _exit(2);
            __atomic_add_fetch(started, 1, __ATOMIC_SEQ_CST);
            loop(names[i]);
        }
    }
    while (__atomic_load_n(started, __ATOMIC_SEQ_CST) < 3) nap(1000000);
    (void)!write(1, "ready\n", 6);
    loop("root");
}
