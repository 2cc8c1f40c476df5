// build: -pthread
// membarrier registrations of the process: global expedited, private
// expedited, with sync-core and with rseq. After restart they must be
// listed again, and the private expedited commands must work (they fail
// with EPERM in a process that did not register). The second thread
// holds no state of its own: it makes the process multithreaded.
// fid.h says how it is driven.
#include "fid.h"
#include <linux/membarrier.h>
#ifndef MEMBARRIER_CMD_GET_REGISTRATIONS
#define MEMBARRIER_CMD_GET_REGISTRATIONS (1 << 9)
#endif

static long mb(int cmd) { return syscall(SYS_membarrier, cmd, 0, 0); }
#define REGISTERED (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED | \
    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE | MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ)

static void nothing(void) {}

static void set_main(void)
{
    MUST(mb(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED));
    MUST(mb(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED));
    MUST(mb(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE));
    MUST(mb(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ));
}

static void check_main(void)
{
    EXPECT_EQ("registrations", mb(MEMBARRIER_CMD_GET_REGISTRATIONS), REGISTERED);
    EXPECT_EQ("private expedited", mb(MEMBARRIER_CMD_PRIVATE_EXPEDITED), 0);
    EXPECT_EQ("private expedited sync-core", mb(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE), 0);
    EXPECT_EQ("global expedited", mb(MEMBARRIER_CMD_GLOBAL_EXPEDITED), 0);
}

int main(void)
{
    static const struct fid_spec spec = { nothing, nothing, set_main, check_main };
    return fid_run(&spec);
}
