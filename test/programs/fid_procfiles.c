// fid_procfiles [outside]: a parent and its child hold /proc files of each
// other and of themselves open (a status file, a /proc/<pid> directory,
// /proc/self/stat as opened through "self"), then "ready". On SIGUSR1
// (after restart) the parent passes the signal on; each reads its fds
// again and checks they name the right process; "parent ok"/"child ok" or
// "FAIL: <who> <what>", exit 0/1.
// With "outside": the parent also opens /proc/1/status (not in the tree),
// then "ready" and "tick N" lines, for the refusal test.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

/** The pid a /proc status or stat fd names, read from offset 0. */
static int pid_in(int fd, int stat)
{
    char buf[4096];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    if (stat) return atoi(buf);
    char *p = strstr(buf, "\nPid:");
    return p ? atoi(p + 5) : -1;
}

static int check(const char *who, int status_fd, int dir_fd, int self_fd, pid_t other, pid_t me)
{
    int ok = 1;
    char b[128];
    if (pid_in(status_fd, 0) != other) { snprintf(b, sizeof b, "FAIL: %s status names another process\n", who); say(b); ok = 0; }
    int st = openat(dir_fd, "stat", O_RDONLY);
    if (st < 0 || pid_in(st, 1) != other) { snprintf(b, sizeof b, "FAIL: %s /proc dir names another process\n", who); say(b); ok = 0; }
    if (st >= 0) close(st);
    if (pid_in(self_fd, 1) != me) { snprintf(b, sizeof b, "FAIL: %s self stat\n", who); say(b); ok = 0; }
    return ok;
}

static int open_of(pid_t pid, const char *rest, int flags)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d%s", (int)pid, rest);
    return open(path, flags);
}

int main(int argc, char **argv)
{
    int outside = argc > 1 && !strcmp(argv[1], "outside");
    sigset_t usr1, none;
    sigemptyset(&usr1);
    sigemptyset(&none);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);
    pid_t parent = getpid();
    int up[2];
    if (pipe(up)) return 2;
    pid_t child = fork();
    if (child == 0) {
        int s = open_of(parent, "/status", O_RDONLY), d = open_of(parent, "", O_RDONLY | O_DIRECTORY);
        int self = open("/proc/self/stat", O_RDONLY);
        char buf[64];
        (void)!read(s, buf, sizeof buf); // an offset that is not 0
        (void)!write(up[1], "c", 1);
        while (!go) sigsuspend(&none);
        int ok = check("child", s, d, self, parent, getpid());
        if (ok) say("child ok\n");
        _exit(!ok);
    }
    int s = open_of(child, "/status", O_RDONLY), d = open_of(child, "", O_RDONLY | O_DIRECTORY);
    int self = open("/proc/self/stat", O_RDONLY);
    if (outside && open("/proc/1/status", O_RDONLY) < 0) { say("FAIL: open /proc/1/status\n"); return 2; }
    char c;
    (void)!read(up[0], &c, 1);
    say("ready\n");
    if (outside) {
        for (int i = 0;; i++) {
            char b[32];
            snprintf(b, sizeof b, "tick %d\n", i);
            say(b);
            struct timespec ts = { 0, 20000000 };
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
        }
    }
    while (!go) sigsuspend(&none);
    int ok = check("parent", s, d, self, child, parent);
    kill(child, SIGUSR1);
    int st;
    waitpid(child, &st, 0);
    if (ok) say("parent ok\n");
    return !(ok && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
