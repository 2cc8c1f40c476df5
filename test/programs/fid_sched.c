// build: -pthread
// Scheduling per thread: the main thread SCHED_FIFO 10 with
// SCHED_RESET_ON_FORK and nice 5 (kept though real-time); the second
// thread SCHED_BATCH, nice 7, a 5 ms custom slice and 123456 ns of timer
// slack. fid.h says how it is driven.
#include "fid.h"
#include <stdint.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>

struct attr { uint32_t size, policy; uint64_t flags; int32_t nice; uint32_t prio; uint64_t runtime, deadline, period; uint32_t umin, umax; };
#define RESET_ON_FORK 1
#define SLICE 5000000ULL

static void getattr(struct attr *a)
{
    memset(a, 0, sizeof *a);
    MUST(syscall(SYS_sched_getattr, 0, a, sizeof *a, 0));
}

static void set_thread(void)
{
    struct attr a = { .size = sizeof a, .policy = SCHED_BATCH, .nice = 7, .runtime = SLICE };
    MUST(syscall(SYS_sched_setattr, 0, &a, 0));
    MUST(prctl(PR_SET_TIMERSLACK, 123456, 0, 0, 0));
}

static void check_thread(void)
{
    struct attr a;
    getattr(&a);
    EXPECT_EQ("thread policy", a.policy, SCHED_BATCH);
    EXPECT_EQ("thread nice", a.nice, 7);
    EXPECT_EQ("thread slice", a.runtime, SLICE);
    EXPECT_EQ("thread flags", a.flags, 0);
    EXPECT_EQ("thread getpriority", getpriority(PRIO_PROCESS, gettid()), 7);
    EXPECT_EQ("thread timer slack", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0), 123456);
}

static void set_main(void)
{
    MUST(setpriority(PRIO_PROCESS, gettid(), 5));
    struct attr a = { .size = sizeof a, .policy = SCHED_FIFO, .flags = RESET_ON_FORK, .prio = 10 };
    MUST(syscall(SYS_sched_setattr, 0, &a, 0));
}

static void check_main(void)
{
    struct attr a;
    getattr(&a);
    EXPECT_EQ("main policy", a.policy, SCHED_FIFO);
    EXPECT_EQ("main priority", a.prio, 10);
    EXPECT_EQ("main flags", a.flags, RESET_ON_FORK);
    EXPECT_EQ("main sched_getscheduler", sched_getscheduler(0), SCHED_FIFO | SCHED_RESET_ON_FORK);
    EXPECT_EQ("main getpriority", getpriority(PRIO_PROCESS, gettid()), 5);
    EXPECT_EQ("main timer slack (real-time: none)", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0), 0);
}

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
