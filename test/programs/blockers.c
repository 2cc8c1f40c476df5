// blockers.c MODE ...
//
// Checkpoint/restart targets that are blocked in various system calls.
//
//   blockers read FILE   open FILE O_RDONLY, print "ready", then read() up to
//                        4096 bytes at a time; on EOF sleep 2 ms and retry
//                        (like tail -f).  Every byte read is echoed to stdout.
//                        When the data read so far ends with "END\n", print
//                        "done" and exit 0.
//   blockers sleep MS    print "ready", do ONE nanosleep of MS ms (retrying
//                        with the remaining time on EINTR), print "slept";
//                        if less than MS ms of CLOCK_MONOTONIC time elapsed,
//                        print "FAIL: short" and exit 1.
//   blockers pause       SIGUSR1 handler (no SA_RESTART) sets a flag; print
//                        "ready", call pause() once, then print "woke" if the
//                        flag is set, else "FAIL: woke without signal".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void write_all(const void *p, size_t len)
{
    const char *buf = p;
    while (len > 0) {
        ssize_t n = write(1, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(2);
        }
        buf += n;
        len -= (size_t)n;
    }
}

static void say(const char *s)
{
    write_all(s, strlen(s));
}

static void sleep_ns(long long ns)
{
    struct timespec req = { (time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL) }, rem;
    while (nanosleep(&req, &rem) == -1) {
        if (errno != EINTR)
            break;
        req = rem;
    }
}

static int do_read(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        say("FAIL: open\n");
        return 1;
    }
    say("ready\n");
    char buf[4096];
    char tail[4] = { 0, 0, 0, 0 }; /* last 4 bytes read so far */
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            say("FAIL: read\n");
            return 1;
        }
        if (n == 0) {
            sleep_ns(2000000LL);
            continue;
        }
        write_all(buf, (size_t)n);
        if (n >= 4) {
            memcpy(tail, buf + n - 4, 4);
        } else {
            memmove(tail, tail + n, (size_t)(4 - n));
            memcpy(tail + 4 - n, buf, (size_t)n);
        }
        if (memcmp(tail, "END\n", 4) == 0) {
            say("done\n");
            return 0;
        }
    }
}

static int do_sleep(const char *arg)
{
    long long ms = strtoll(arg, NULL, 10);
    struct timespec t0, t1;
    say("ready\n");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sleep_ns(ms * 1000000LL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    say("slept\n");
    long long elapsed = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL +
                        (t1.tv_nsec - t0.tv_nsec);
    if (elapsed < ms * 1000000LL) {
        say("FAIL: short\n");
        return 1;
    }
    return 0;
}

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static int do_pause(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART */
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        say("FAIL: sigaction\n");
        return 1;
    }
    say("ready\n");
    pause();
    if (got_usr1) {
        say("woke\n");
        return 0;
    }
    say("FAIL: woke without signal\n");
    return 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "read") == 0)
        return do_read(argv[2]);
    if (argc == 3 && strcmp(argv[1], "sleep") == 0)
        return do_sleep(argv[2]);
    if (argc == 2 && strcmp(argv[1], "pause") == 0)
        return do_pause();
    fprintf(stderr, "usage: %s read FILE | sleep MS | pause\n", argv[0]);
    return 2;
}
