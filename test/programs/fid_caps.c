// build: -pthread
// Credentials and capabilities, set as root. Second thread: inheritable
// {CHOWN}, CAP_SYS_MODULE dropped from its bounding set, ambient CHOWN
// (lost again at the uid change below, as it must be). Main thread: drops
// SYS_BOOT and MKNOD from its bounding set, sets keepcaps, becomes uid/gid
// 1000 with groups 100 and 200 (glibc changes every thread, and the second
// thread, without keepcaps, loses its permitted and effective sets), then
// keeps permitted {KILL, SETPCAP, NET_BIND_SERVICE, NET_RAW}, effective
// {KILL, NET_BIND_SERVICE}, inheritable {NET_BIND_SERVICE, NET_RAW},
// ambient {NET_BIND_SERVICE} and securebits KEEP_CAPS|NO_CAP_AMBIENT_RAISE.
// A uid change also made the process not dumpable. fid.h says how it is driven.
#include "fid.h"
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>

#define BIT(c) (1u << (c))
static const unsigned MAIN_PRM = BIT(CAP_KILL) | BIT(CAP_SETPCAP) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW);
static const unsigned MAIN_EFF = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE);
static const unsigned MAIN_INH = BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW);
static const int MAIN_BITS = SECBIT_KEEP_CAPS | SECBIT_NO_CAP_AMBIENT_RAISE;

struct caps { unsigned eff, prm, inh, high; };

static struct caps get_caps(void)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    MUST(syscall(SYS_capget, &h, d));
    return (struct caps){ d[0].effective, d[0].permitted, d[0].inheritable, d[1].effective | d[1].permitted | d[1].inheritable };
}

static void set_caps(unsigned eff, unsigned prm, unsigned inh)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = { { eff, prm, inh }, { 0, 0, 0 } };
    struct caps now = get_caps();
    d[1].effective = d[1].permitted = 0;
    if (now.prm == 0xffffffffu) { // root: keep the high half as it is
        struct __user_cap_data_struct full[2];
        MUST(syscall(SYS_capget, &h, full));
        d[1].permitted = full[1].permitted;
        d[1].effective = full[1].effective & full[1].permitted;
    }
    MUST(syscall(SYS_capset, &h, d));
}

static void check_ids(const char *who)
{
    uid_t r, e, s;
    gid_t gr, ge, gs, groups[8];
    MUST(getresuid(&r, &e, &s));
    MUST(getresgid(&gr, &ge, &gs));
    if (r != 1000 || e != 1000 || s != 1000) fail("%s uids %u/%u/%u", who, r, e, s);
    if (gr != 1000 || ge != 1000 || gs != 1000) fail("%s gids %u/%u/%u", who, gr, ge, gs);
    int n = getgroups(8, groups);
    if (n != 2 || groups[0] != 100 || groups[1] != 200) fail("%s groups: %d of them", who, n);
}

static void set_thread(void)
{
    struct caps c = get_caps();
    set_caps(c.eff, c.prm, BIT(CAP_CHOWN));
    MUST(prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE, 0, 0, 0));
    MUST(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_CHOWN, 0, 0));
}

static void check_thread(void)
{
    struct caps c = get_caps();
    EXPECT_EQ("thread effective", c.eff, 0);
    EXPECT_EQ("thread permitted", c.prm, 0);
    EXPECT_EQ("thread inheritable", c.inh, BIT(CAP_CHOWN));
    EXPECT_EQ("thread capabilities above 31", c.high, 0);
    EXPECT_EQ("thread bounding SYS_MODULE", prctl(PR_CAPBSET_READ, CAP_SYS_MODULE, 0, 0, 0), 0);
    EXPECT_EQ("thread bounding SYS_BOOT", prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0), 1);
    EXPECT_EQ("thread ambient CHOWN", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_CHOWN, 0, 0), 0);
    EXPECT_EQ("thread securebits", prctl(PR_GET_SECUREBITS, 0, 0, 0, 0), 0);
    check_ids("thread");
}

static void set_main(void)
{
    MUST(prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0));
    MUST(prctl(PR_CAPBSET_DROP, CAP_MKNOD, 0, 0, 0));
    MUST(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));
    gid_t groups[2] = { 100, 200 };
    MUST(setgroups(2, groups));
    MUST(setresgid(1000, 1000, 1000));
    MUST(setresuid(1000, 1000, 1000));
    set_caps(MAIN_PRM, MAIN_PRM, MAIN_INH);
    MUST(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0));
    MUST(prctl(PR_SET_SECUREBITS, MAIN_BITS, 0, 0, 0));
    set_caps(MAIN_EFF, MAIN_PRM, MAIN_INH);
}

static void check_main(void)
{
    struct caps c = get_caps();
    EXPECT_EQ("main effective", c.eff, MAIN_EFF);
    EXPECT_EQ("main permitted", c.prm, MAIN_PRM);
    EXPECT_EQ("main inheritable", c.inh, MAIN_INH);
    EXPECT_EQ("main capabilities above 31", c.high, 0);
    EXPECT_EQ("main bounding SYS_BOOT", prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0), 0);
    EXPECT_EQ("main bounding MKNOD", prctl(PR_CAPBSET_READ, CAP_MKNOD, 0, 0, 0), 0);
    EXPECT_EQ("main bounding SYS_MODULE", prctl(PR_CAPBSET_READ, CAP_SYS_MODULE, 0, 0, 0), 1);
    EXPECT_EQ("main ambient NET_BIND_SERVICE", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0), 1);
    EXPECT_EQ("main ambient NET_RAW", prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_RAW, 0, 0), 0);
    EXPECT_EQ("main securebits", prctl(PR_GET_SECUREBITS, 0, 0, 0, 0), MAIN_BITS);
    EXPECT_EQ("keepcaps", prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0), 1);
    EXPECT_EQ("dumpable", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
    check_ids("main");
}

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
