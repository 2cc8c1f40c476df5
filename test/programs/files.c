// files.c IN OUT
//
// Checkpoint/restart target for file descriptors: copies IN to OUT 16 bytes
// at a time (read/write, 1 ms apart).  OUT must already exist and is opened
// O_WRONLY|O_APPEND.  Also holds open: a directory fd on ".", /dev/null, and
// /dev/urandom with O_CLOEXEC, which are verified before finishing.
//
// Protocol: "ready", ..., "done" (or "FAIL: <why>", exit 1).
// The test checks that OUT ends up byte-identical to IN.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static void write_fd(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (fd == 1)
                _exit(2);
            dprintf(1, "FAIL: write OUT: %s\n", strerror(errno));
            _exit(1);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void say(const char *s)
{
    write_fd(1, s, strlen(s));
}

static int fail(const char *why)
{
    say("FAIL: ");
    say(why);
    say("\n");
    return 1;
}

static void sleep_ms(long ms)
{
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            break;
        req = rem;
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    int in = open(argv[1], O_RDONLY);
    if (in < 0)
        return fail("open IN");
    int outfd = open(argv[2], O_WRONLY | O_APPEND);
    if (outfd < 0)
        return fail("open OUT");
    int dirfd = open(".", O_RDONLY | O_DIRECTORY);
    if (dirfd < 0)
        return fail("open .");
    int nullfd = open("/dev/null", O_RDWR);
    if (nullfd < 0)
        return fail("open /dev/null");
    int urandfd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (urandfd < 0)
        return fail("open /dev/urandom");

    say("ready\n");

    char buf[16];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return fail("read IN");
        }
        if (n == 0)
            break;
        write_fd(outfd, buf, (size_t)n);
        sleep_ms(1);
    }

    struct stat st;
    if (fstat(dirfd, &st) < 0 || !S_ISDIR(st.st_mode))
        return fail("directory fd is not a directory");
    if (fcntl(dirfd, F_GETFD) != 0)
        return fail("directory fd flags changed");
    if (fstat(nullfd, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3))
        return fail("/dev/null fd is not /dev/null");
    if (fcntl(nullfd, F_GETFD) != 0)
        return fail("/dev/null fd has FD_CLOEXEC");
    if ((fcntl(nullfd, F_GETFL) & O_ACCMODE) != O_RDWR)
        return fail("/dev/null fd is not O_RDWR");
    if (fstat(urandfd, &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 9))
        return fail("/dev/urandom fd is not /dev/urandom");
    int fdfl = fcntl(urandfd, F_GETFD);
    if (fdfl < 0 || !(fdfl & FD_CLOEXEC))
        return fail("/dev/urandom fd lost FD_CLOEXEC");
    int fl = fcntl(outfd, F_GETFL);
    if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY)
        return fail("OUT fd lost O_WRONLY|O_APPEND");
    if ((fcntl(in, F_GETFL) & O_ACCMODE) != O_RDONLY)
        return fail("IN fd is not O_RDONLY");
    char c;
    if (read(urandfd, &c, 1) != 1)
        return fail("read /dev/urandom");
    if (write(nullfd, "x", 1) != 1)
        return fail("write /dev/null");

    say("done\n");
    return 0;
}
