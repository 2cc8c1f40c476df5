// build: -pthread
// prctl state. Process-wide: child subreaper, THP disabled except where
// advised, MDWE refuse-exec-gain, KSM merge-any, a private futex hash of
// 32 slots, not dumpable. Main thread: parent-death signal SIGWINCH,
// machine-check kill early, personality ADDR_NO_RANDOMIZE. Second thread:
// parent-death signal SIGURG, no_new_privs, rdtsc faulting (PR_TSC_SIGSEGV),
// cpuid faulting, machine-check kill late, personality UNAME26. (The
// parent-death signals are ones ignored by default: the test's end is
// harmless.) fid.h says how it is driven.
#include "fid.h"
#include <sys/personality.h>
#include <sys/prctl.h>

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_GET_MDWE 66
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#define PR_GET_MEMORY_MERGE 68
#endif
#define PR_FUTEX_HASH_ 78
#define PR_FUTEX_HASH_SET_SLOTS 1
#define PR_FUTEX_HASH_GET_SLOTS 2
#define PR_THP_DISABLE_EXCEPT_ADVISED_ (1 << 1)
#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

static int get_int(int option)
{
    int v = -1;
    MUST(prctl(option, &v, 0, 0, 0));
    return v;
}

static void set_thread(void)
{
    MUST(prctl(PR_SET_PDEATHSIG, SIGURG, 0, 0, 0));
    MUST(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    MUST(prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0));
    MUST(syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0));
    MUST(prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_LATE, 0, 0));
    MUST(personality(PER_LINUX | UNAME26));
}

static void check_thread(void)
{
    EXPECT_EQ("thread pdeathsig", get_int(PR_GET_PDEATHSIG), SIGURG);
    EXPECT_EQ("thread no_new_privs", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 1);
    EXPECT_EQ("thread tsc", get_int(PR_GET_TSC), PR_TSC_SIGSEGV);
    EXPECT_EQ("thread cpuid", syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0), 0);
    EXPECT_EQ("thread mce kill", prctl(PR_MCE_KILL_GET, 0, 0, 0, 0), PR_MCE_KILL_LATE);
    EXPECT_EQ("thread personality", personality(0xffffffff), PER_LINUX | UNAME26);
}

static void set_main(void)
{
    MUST(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0));
    MUST(prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED_, 0, 0));
    MUST(prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0));
    MUST(prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0));
    MUST(prctl(PR_FUTEX_HASH_, PR_FUTEX_HASH_SET_SLOTS, 32, 0, 0));
    MUST(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    MUST(prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0));
    MUST(prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0));
    MUST(personality(PER_LINUX | ADDR_NO_RANDOMIZE));
}

static void check_main(void)
{
    EXPECT_EQ("child subreaper", get_int(PR_GET_CHILD_SUBREAPER), 1);
    EXPECT_EQ("thp disable", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0), 1 | PR_THP_DISABLE_EXCEPT_ADVISED_);
    EXPECT_EQ("mdwe", prctl(PR_GET_MDWE, 0, 0, 0, 0), PR_MDWE_REFUSE_EXEC_GAIN);
    EXPECT_EQ("memory merge", prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0), 1);
    EXPECT_EQ("futex hash slots", prctl(PR_FUTEX_HASH_, PR_FUTEX_HASH_GET_SLOTS, 0, 0, 0), 32);
    EXPECT_EQ("dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    EXPECT_EQ("main pdeathsig", get_int(PR_GET_PDEATHSIG), SIGWINCH);
    EXPECT_EQ("main mce kill", prctl(PR_MCE_KILL_GET, 0, 0, 0, 0), PR_MCE_KILL_EARLY);
    EXPECT_EQ("main no_new_privs", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 0);
    EXPECT_EQ("main tsc", get_int(PR_GET_TSC), PR_TSC_ENABLE);
    EXPECT_EQ("main cpuid", syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0), 1);
    EXPECT_EQ("main personality", personality(0xffffffff), PER_LINUX | ADDR_NO_RANDOMIZE);
}

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
