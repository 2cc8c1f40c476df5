// A terminal emulator in miniature: an interactive bash in a pty whose
// master this process holds. Bytes written into the FIFO KEYS are typed
// into the terminal; whatever the terminal shows is copied to stdout.
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) || unlockpt(m)) return 2;
  struct winsize ws = { .ws_row = 40, .ws_col = 120 };
  ioctl(m, TIOCSWINSZ, &ws);
  char *name = ptsname(m);
  pid_t sh = fork();
  if (sh == 0) {
    setsid();
    int s = open(name, O_RDWR);
    if (s < 0) _exit(2);
    dup2(s, 0); dup2(s, 1); dup2(s, 2);
    if (s > 2) close(s);
    close(m);
    setenv("PS1", "$ ", 1);
    setenv("TERM", "dumb", 1);
    execlp("bash", "bash", "--norc", "--noprofile", "-i", (char *)NULL);
    _exit(2);
  }
  int keys = open(argv[1], O_RDWR); // never sees EOF
  if (keys < 0) return 2;
  struct pollfd p[2] = { { .fd = m, .events = POLLIN }, { .fd = keys, .events = POLLIN } };
  char buf[4096];
  for (;;) {
    if (poll(p, 2, -1) < 0) continue;
    if (p[0].revents & POLLIN) {
      ssize_t n = read(m, buf, sizeof buf);
      if (n > 0 && write(1, buf, n) != n) return 2;
    } else if (p[0].revents & (POLLHUP | POLLERR)) {
      return 0; // the shell is gone
    }
    if (p[1].revents & POLLIN) {
      ssize_t n = read(keys, buf, sizeof buf);
      if (n > 0 && write(m, buf, n) != n) return 2;
    }
  }
}
