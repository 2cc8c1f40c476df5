// epoll: an epoll watching a pipe (data 111), an eventfd (data 222) and a
// one-shot 1 s timerfd (data 333), all level-triggered. Prints "ready" and
// waits in epoll_wait: first the timer must be reported, then the eventfd
// it writes, then the pipe it writes: "epoll ok".
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static uint64_t next_event(int ep)
{
    struct epoll_event ev;
    int n;
    while ((n = epoll_wait(ep, &ev, 1, -1)) < 0 && errno == EINTR) ;
    return n == 1 ? ev.data.u64 : 0;
}

int main(void)
{
    int p[2];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int efd = eventfd(0, 0);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    if (ep < 0 || efd < 0 || tfd < 0 || pipe(p) < 0) return 2;
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = 111;
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    ev.data.u64 = 222;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    ev.data.u64 = 333;
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    struct itimerspec once = {{0, 0}, {1, 0}};
    timerfd_settime(tfd, 0, &once, NULL);
    say("ready\n");
    uint64_t v;
    if (next_event(ep) != 333 || read(tfd, &v, 8) != 8) { say("FAIL: timer\n"); return 1; }
    v = 1;
    (void)!write(efd, &v, 8);
    if (next_event(ep) != 222 || read(efd, &v, 8) != 8) { say("FAIL: eventfd\n"); return 1; }
    (void)!write(p[1], "x", 1);
    char c;
    if (next_event(ep) != 111 || read(p[0], &c, 1) != 1) { say("FAIL: pipe\n"); return 1; }
    say("epoll ok\n");
    return 0;
}
