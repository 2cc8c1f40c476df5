// fid_refused MODE: holds one object stasis refuses by name, prints
// "ready", and on each SIGUSR1 checks the object still works and prints
// "MODE ok" (the refused checkpoint left it alone). Modes:
//   fanotify        fanotify_init + a mark on "." (FAN_CREATE, a directory)
//   io_uring        io_uring_setup with its rings mapped
//   aio             io_setup: an [aio] ring mapping, no fd
//   netlink-route   AF_NETLINK NETLINK_ROUTE, bound, in RTMGRP_LINK
//   netlink-uevent  AF_NETLINK NETLINK_KOBJECT_UEVENT
//   packet          AF_PACKET SOCK_RAW
//   raw             AF_INET SOCK_RAW IPPROTO_ICMP
//   pidfd-outside   a pidfd of pid 1, outside the tree
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/if_ether.h>
#include <linux/io_uring.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
#define MUST(x) do { if ((long)(x) < 0) { printf("setup failed: %s: %s\n", #x, strerror(errno)); exit(2); } } while (0)

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 2;
    const char *mode = argv[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int fd = -1;
    aio_context_t aio = 0;
    if (!strcmp(mode, "fanotify")) {
        fd = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
        MUST(fd);
        MUST(fanotify_mark(fd, FAN_MARK_ADD, FAN_CREATE | FAN_ONDIR, AT_FDCWD, "."));
    } else if (!strcmp(mode, "io_uring")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        fd = (int)syscall(__NR_io_uring_setup, 4, &p);
        MUST(fd);
        MUST(mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING));
    } else if (!strcmp(mode, "aio")) {
        MUST(syscall(__NR_io_setup, 8, &aio));
    } else if (!strcmp(mode, "netlink-route")) {
        fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
        MUST(fd);
        struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
        MUST(bind(fd, (struct sockaddr *)&a, sizeof a));
    } else if (!strcmp(mode, "netlink-uevent")) {
        fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
        MUST(fd);
    } else if (!strcmp(mode, "packet")) {
        fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
        MUST(fd);
    } else if (!strcmp(mode, "raw")) {
        fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
        MUST(fd);
    } else if (!strcmp(mode, "pidfd-outside")) {
        fd = (int)syscall(SYS_pidfd_open, 1, 0);
        MUST(fd);
    } else {
        return 2;
    }
    printf("ready\n");
    for (;;) {
        await_flag(&go);
        go = 0;
        if (fd >= 0 && fcntl(fd, F_GETFD) < 0) { printf("FAIL %s: fd %d is gone\n", mode, fd); return 1; }
        if (aio && syscall(__NR_io_destroy, aio) != 0) { printf("FAIL aio: io_destroy: %s\n", strerror(errno)); return 1; }
        aio = 0;
        printf("%s ok\n", mode);
    }
}
