// fid_fifo: one process holds a FIFO open three ways (read-write,
// read-only non-blocking, write-only non-blocking) with 8 bytes in flight,
// and a second FIFO read-only with no writer; then "ready". On SIGUSR1
// (after restart): the flags are unchanged, the bytes in flight come out
// of the read-only fd, a byte written on the write-only fd comes out of
// the read-write one, and the writerless FIFO reads as end of file.
// Prints "ok" or "FAIL: <what>", exits 0/1.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }
static int failed;
static void fail(const char *what) { say("FAIL: "); say(what); say("\n"); failed = 1; }

int main(void)
{
    sigset_t usr1, none;
    sigemptyset(&usr1);
    sigemptyset(&none);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);
    unlink("fifo");
    unlink("lonely");
    if (mkfifo("fifo", 0600) || mkfifo("lonely", 0600)) { say("FAIL: mkfifo\n"); return 2; }
    int rw = open("fifo", O_RDWR);
    int ro = open("fifo", O_RDONLY | O_NONBLOCK);
    int wo = open("fifo", O_WRONLY | O_NONBLOCK);
    int lonely = open("lonely", O_RDONLY | O_NONBLOCK);
    if (rw < 0 || ro < 0 || wo < 0 || lonely < 0) { say("FAIL: open\n"); return 2; }
    int flags[3] = { fcntl(rw, F_GETFL), fcntl(ro, F_GETFL), fcntl(wo, F_GETFL) };
    (void)!write(rw, "inflight", 8);
    say("ready\n");
    while (!go) sigsuspend(&none);

    if (fcntl(rw, F_GETFL) != flags[0] || fcntl(ro, F_GETFL) != flags[1] || fcntl(wo, F_GETFL) != flags[2]) fail("flags");
    struct stat a, b;
    if (fstat(rw, &a) || stat("fifo", &b) || a.st_ino != b.st_ino || !S_ISFIFO(a.st_mode)) fail("not the FIFO");
    char buf[16] = { 0 };
    if (read(ro, buf, sizeof buf) != 8 || memcmp(buf, "inflight", 8)) fail("bytes in flight");
    if (write(wo, "x", 1) != 1) fail("write");
    if (read(rw, buf, 1) != 1 || buf[0] != 'x') fail("write then read");
    if (read(ro, buf, 1) != -1 || errno != EAGAIN) fail("empty FIFO with a writer should say EAGAIN");
    if (read(lonely, buf, 1) != 0) fail("writerless FIFO should read end of file");
    if (!failed) say("ok\n");
    return failed;
}
