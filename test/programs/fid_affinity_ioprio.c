// build: -pthread
// CPU affinity and I/O priority per thread: the main thread on CPU 1 only
// in the idle I/O class; the second thread on CPU 0 only in the real-time
// I/O class at level 5 (needs CAP_SYS_ADMIN: run as root). Needs 2 CPUs.
// fid.h says how it is driven.
#include "fid.h"
#include <sched.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_VALUE(class, data) (((class) << 13) | (data))
#define IOPRIO_CLASS_RT 1
#define IOPRIO_CLASS_IDLE 3

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    MUST(sched_setaffinity(0, sizeof s, &s));
}

static void check_pin(const char *who, int cpu)
{
    cpu_set_t s;
    MUST(sched_getaffinity(0, sizeof s, &s));
    if (CPU_COUNT(&s) != 1 || !CPU_ISSET(cpu, &s)) fail("%s affinity: %d CPUs, CPU %d %s", who, CPU_COUNT(&s), cpu, CPU_ISSET(cpu, &s) ? "in" : "missing");
}

static void set_thread(void)
{
    pin(0);
    MUST(syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(IOPRIO_CLASS_RT, 5)));
}

static void check_thread(void)
{
    check_pin("thread", 0);
    EXPECT_EQ("thread ioprio", syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0), IOPRIO_VALUE(IOPRIO_CLASS_RT, 5));
}

static void set_main(void)
{
    pin(1);
    MUST(syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, IOPRIO_VALUE(IOPRIO_CLASS_IDLE, 0)));
}

static void check_main(void)
{
    check_pin("main", 1);
    EXPECT_EQ("main ioprio", syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0), IOPRIO_VALUE(IOPRIO_CLASS_IDLE, 0));
}

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
