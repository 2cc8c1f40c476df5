// fid_clonefiles: processes sharing kernel objects with their parent.
// With no argument: a child cloned with CLONE_FILES|CLONE_FS and one with
// CLONE_FILES only; prints "ready" once both wait for SIGUSR1 (the test
// sends it to both children). Each child then opens a file (shared fd
// table: the parent sees the new fd), the first also changes cwd and umask
// (shared fs: the parent follows), and exits with the fd number. The
// parent, waiting in waitpid all along, checks everything: "shared ok".
// File "plock" carries a POSIX write lock 0..9 set by the parent and a read
// lock 20..29 set by the CLONE_FILES child through the shared table.
// `sighand`: a child sharing address space and signal handlers (refused).
// `io`: a child sharing the I/O context (CLONE_IO, refused).
// `semundo`: holds a semaphore adjustment with SEM_UNDO (refused); `sem`:
// the same without SEM_UNDO. Both print "semid N", "ready", and on SIGUSR1
// check the value is still 1: "sem ok".
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static int fail(const char *why) { say("FAIL: "); say(why); say("\n"); return 1; }

/* A fork that shares `flags` with the parent (no CLONE_VM: the child runs on a copy of the stack). */
static pid_t clone_sharing(int flags) { return syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0); }

static int idle(void *arg) { (void)arg; for (;;) pause(); }

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    if (argc > 1 && !strcmp(argv[1], "sighand")) {
        static char stack[65536];
        if (clone(idle, stack + sizeof stack, CLONE_VM | CLONE_SIGHAND | SIGCHLD, NULL) < 0) return 2;
        say("ready\n");
        for (;;) pause();
    }
    if (argc > 1 && !strcmp(argv[1], "io")) {
        /* an I/O context exists once an I/O priority is set; CLONE_IO shares it */
        if (syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, 0, (2 << 13) | 4 /* best effort, level 4 */)) return 2;
        if (clone_sharing(CLONE_IO) == 0) for (;;) pause();
        say("ready\n");
        for (;;) pause();
    }
    if (argc > 1 && (!strcmp(argv[1], "semundo") || !strcmp(argv[1], "sem"))) {
        int id = semget(IPC_PRIVATE, 1, 0600);
        struct sembuf up = { 0, 1, !strcmp(argv[1], "semundo") ? SEM_UNDO : 0 };
        if (id < 0 || semop(id, &up, 1)) return 2;
        char line[64];
        snprintf(line, sizeof line, "semid %d\nready\n", id);
        say(line);
        await_flag(&go);
        if (semctl(id, 0, GETVAL) != 1) return fail("semaphore value");
        say("sem ok\n");
        return 0;
    }
    if (mkdir("sub", 0700) && access("sub", F_OK)) return 2;
    umask(022);
    /* POSIX locks in a shared fd table: one owner, each lock listed with the pid that set it */
    int plock = open("plock", O_RDWR | O_CREAT, 0600);
    struct flock wr = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10 };
    if (plock < 0 || fcntl(plock, F_SETLK, &wr)) return 2;
    pid_t both = clone_sharing(CLONE_FILES | CLONE_FS);
    if (both == 0) {
        await_flag(&go);
        int fd = open("both", O_RDWR | O_CREAT, 0600);
        if (chdir("sub") || fd < 0) _exit(255);
        umask(077);
        _exit(fd);
    }
    pid_t files = clone_sharing(CLONE_FILES);
    if (files == 0) {
        struct flock rd = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 10 };
        if (fcntl(plock, F_SETLK, &rd)) _exit(255);
        await_flag(&go);
        int fd = open("files", O_RDWR | O_CREAT, 0600);
        umask(070); /* not shared: the parent keeps its own */
        _exit(fd < 0 ? 255 : fd);
    }
    /* ready once the child's lock shows from another open file */
    int probe = open("plock", O_RDWR);
    for (;;) {
        struct flock q = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 25, .l_len = 1 };
        if (fcntl(probe, F_OFD_GETLK, &q)) return 2;
        if (q.l_type == F_RDLCK && q.l_pid == files) break;
        usleep(1000);
    }
    say("ready\n");
    int st1, st2;
    if (waitpid(both, &st1, 0) != both || waitpid(files, &st2, 0) != files) return fail("waitpid");
    if (!WIFEXITED(st1) || !WIFEXITED(st2) || WEXITSTATUS(st1) == 255 || WEXITSTATUS(st2) == 255) return fail("children");
    int fd1 = WEXITSTATUS(st1), fd2 = WEXITSTATUS(st2);
    struct stat a, b;
    /* the children's fds are in this table, on the files they opened (cwd changed since: "sub" is cwd) */
    if (fstat(fd1, &a) || stat("../both", &b) || a.st_ino != b.st_ino) return fail("CLONE_FILES: fd of child 1");
    if (fstat(fd2, &a) || stat("../files", &b) || a.st_ino != b.st_ino) return fail("CLONE_FILES: fd of child 2");
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd) || strcmp(strrchr(cwd, '/'), "/sub")) return fail("CLONE_FS: cwd");
    mode_t m = umask(0);
    if (m != 077) return fail("CLONE_FS: umask");
    say("shared ok\n");
    return 0;
}
