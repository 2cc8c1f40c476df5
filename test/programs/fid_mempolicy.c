// build: -pthread
// NUMA memory policy per thread (node 0 exists everywhere): the main
// thread interleaves over node 0 with relative nodes; the second thread
// is bound to node 0 with static nodes. fid.h says how it is driven.
#include "fid.h"

#define MPOL_BIND_ 2
#define MPOL_INTERLEAVE_ 3
#define MPOL_F_STATIC_NODES_ (1 << 15)
#define MPOL_F_RELATIVE_NODES_ (1 << 14)

static void set_policy(int mode)
{
    unsigned long nodes[16] = { 1 };
    MUST(syscall(SYS_set_mempolicy, mode, nodes, 1024));
}

static void check_policy(const char *who, int want)
{
    unsigned long nodes[16] = { 0 };
    int mode = -1;
    MUST(syscall(SYS_get_mempolicy, &mode, nodes, 1024, 0, 0));
    EXPECT_EQ(who, mode, want);
    for (int i = 0; i < 16; i++) if (nodes[i] != (i == 0)) fail("%s: nodes word %d is %lx", who, i, nodes[i]);
}

static void set_thread(void) { set_policy(MPOL_BIND_ | MPOL_F_STATIC_NODES_); }
static void check_thread(void) { check_policy("thread policy", MPOL_BIND_ | MPOL_F_STATIC_NODES_); }
static void set_main(void) { set_policy(MPOL_INTERLEAVE_ | MPOL_F_RELATIVE_NODES_); }
static void check_main(void) { check_policy("main policy", MPOL_INTERLEAVE_ | MPOL_F_RELATIVE_NODES_); }

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
