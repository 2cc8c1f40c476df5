// Lines waiting in a canonical-mode pty. The root holds the master and
// types into it, before `ready`: two complete lines ("one", then one with
// a ^D and a newline typed after ^V, so data of the line), a line ended by
// ^D, an empty one (^D alone), and "abc" with no newline yet. A child
// holds the slave (canonical, ECHO off); on SIGUSR1 it reads five times
// and prints each read (`read N: bytes`, escaped). Bytes written into the
// FIFO KEYS are typed into the terminal afterwards (`typed N` once they
// are written to the master). When the child is done the root prints
// `master quiet` if nothing came out of the terminal, then `done`.
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

// One write per read shown: the root's `typed N` lines share the file.
static void show(int i, const unsigned char *b, ssize_t n) {
  char line[4 * 4096 + 64];
  int len = snprintf(line, sizeof line, "read %d: ", i);
  for (ssize_t k = 0; k < n; k++) {
    if (b[k] == '\n') len += snprintf(line + len, sizeof line - len, "\\n");
    else if (b[k] >= 0x20 && b[k] < 0x7f && b[k] != '\\') line[len++] = (char)b[k];
    else len += snprintf(line + len, sizeof line - len, "\\x%02x", b[k]);
  }
  len += snprintf(line + len, sizeof line - len, "%s\n", n < 0 ? "error" : "");
  fwrite(line, 1, len, stdout);
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  setvbuf(stdout, NULL, _IONBF, 0);
  signal(SIGUSR1, on_usr1);
  sigset_t usr1, none;
  sigemptyset(&usr1);
  sigemptyset(&none);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) || unlockpt(m)) { printf("setup failed: openpt\n"); return 2; }
  char name[64];
  ptsname_r(m, name, sizeof name);
  int sync[2], done[2];
  if (pipe(sync) || pipe(done)) return 2;
  pid_t child = fork();
  if (child == 0) {
    close(m);
    close(sync[0]);
    close(done[0]);
    int s = open(name, O_RDWR | O_NOCTTY);
    if (s < 0) { printf("setup failed: open slave\n"); _exit(2); }
    struct termios t;
    tcgetattr(s, &t);
    t.c_lflag &= ~ECHO; // canonical, as a fresh terminal is, but silent
    tcsetattr(s, TCSANOW, &t);
    if (write(sync[1], "x", 1) != 1) _exit(2);
    close(sync[1]);
    while (!go) sigsuspend(&none);
    for (int i = 1; i <= 5; i++) {
      unsigned char b[4096];
      show(i, b, read(s, b, sizeof b));
    }
    _exit(0);
  }
  close(sync[1]);
  close(done[1]);
  char c;
  if (read(sync[0], &c, 1) != 1) { printf("setup failed: child\n"); return 2; }
  close(sync[0]);
  static const char typed[] = "one\n" "x\026\004y\026\nz\n" "eof\004" "\004" "abc";
  if (write(m, typed, sizeof typed - 1) != (ssize_t)sizeof typed - 1) return 2;
  int keys = open(argv[1], O_RDWR); // never sees EOF
  if (keys < 0) return 2;
  printf("ready\n");
  struct pollfd p[2] = { { .fd = keys, .events = POLLIN }, { .fd = done[0], .events = POLLIN } };
  for (;;) {
    if (poll(p, 2, -1) < 0) continue;
    if (p[0].revents & POLLIN) {
      char buf[256];
      ssize_t n = read(keys, buf, sizeof buf);
      if (n > 0 && write(m, buf, n) != n) return 2;
      printf("typed %zd\n", n);
    }
    if (p[1].revents & (POLLIN | POLLHUP)) break; // the child is gone
  }
  int status;
  waitpid(child, &status, 0);
  // Nothing was echoed: the slave has ECHO off, and stasis's own echo stays with it.
  struct pollfd q = { .fd = m, .events = POLLIN };
  int n = 0;
  ioctl(m, FIONREAD, &n);
  poll(&q, 1, 0);
  if ((q.revents & POLLIN) || n) printf("FAIL master has %d bytes to read\n", n);
  else printf("master quiet\n");
  printf("done\n");
  return status ? 1 : 0;
}
