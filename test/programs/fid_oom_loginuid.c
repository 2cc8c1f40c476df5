// build: -pthread
// oom_score_adj 321, coredump_filter 0x7f and the nice value 4 of its
// session's autogroup (it leads its session) per process, the audit
// loginuid per thread: 4343 in the second thread, 4242 in the main one
// (changing a set loginuid needs CAP_AUDIT_CONTROL: run as root).
// fid.h says how it is driven.
#include "fid.h"
#include <fcntl.h>

static void put(const char *file, const char *value)
{
    int fd = open(file, O_WRONLY);
    MUST(fd);
    MUST(write(fd, value, strlen(value)));
    close(fd);
}

static long get(const char *file, int base)
{
    char buf[64] = { 0 };
    int fd = open(file, O_RDONLY);
    MUST(fd);
    MUST(read(fd, buf, sizeof buf - 1));
    close(fd);
    return strtol(buf, NULL, base);
}

static void set_thread(void) { put("/proc/thread-self/loginuid", "4343"); }
static void check_thread(void) { EXPECT_EQ("thread loginuid", get("/proc/thread-self/loginuid", 10), 4343); }

static void set_main(void)
{
    put("/proc/thread-self/loginuid", "4242");
    put("/proc/self/oom_score_adj", "321");
    put("/proc/self/coredump_filter", "0x7f");
    put("/proc/self/autogroup", "4");
}

static int autogroup_nice(void)
{
    char buf[128] = { 0 };
    int fd = open("/proc/self/autogroup", O_RDONLY);
    MUST(fd);
    MUST(read(fd, buf, sizeof buf - 1));
    close(fd);
    const char *n = strstr(buf, " nice ");
    return n ? atoi(n + 6) : -100;
}

static void check_main(void)
{
    EXPECT_EQ("main loginuid", get("/proc/thread-self/loginuid", 10), 4242);
    EXPECT_EQ("oom_score_adj", get("/proc/self/oom_score_adj", 10), 321);
    EXPECT_EQ("coredump_filter", get("/proc/self/coredump_filter", 16), 0x7f);
    EXPECT_EQ("autogroup nice", autogroup_nice(), 4);
}

int main(void)
{
    static const struct fid_spec spec = { set_thread, check_thread, set_main, check_main };
    return fid_run(&spec);
}
