// A pty pair inside the tree: the root holds the master (packet mode,
// custom termios and window size, bytes queued both ways), a child is the
// session leader with the slave as controlling terminal, a grandchild is
// its foreground process group. `ready`; on SIGUSR1 the root checks the
// master side and signals the child, which checks the slave side:
// `master ok` and `slave ok`, or FAIL lines.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
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
static void wait_go(void) {
  sigset_t none;
  sigemptyset(&none);
  while (!go) sigsuspend(&none);
}
static int fails;
static void fail(const char *what, long got, long want) {
  printf("FAIL %s: %ld, expected %ld\n", what, got, want);
  fflush(stdout);
  fails++;
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  signal(SIGUSR1, on_usr1);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) || unlockpt(m)) { printf("setup failed: openpt\n"); return 2; }
  char name[64];
  ptsname_r(m, name, sizeof name);
  struct termios t;
  tcgetattr(m, &t);
  t.c_lflag &= ~(ICANON | ECHO);
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  t.c_cc[VINTR] = 7;
  cfsetspeed(&t, B9600);
  tcsetattr(m, TCSANOW, &t);
  struct winsize ws = { .ws_row = 33, .ws_col = 101, .ws_xpixel = 7, .ws_ypixel = 9 };
  ioctl(m, TIOCSWINSZ, &ws);
  int one = 1;
  ioctl(m, TIOCPKT, &one);
  int sync[2];
  if (pipe(sync)) return 2;
  pid_t child = fork();
  if (child == 0) {
    close(m);
    close(sync[0]);
    setsid();
    int s = open(name, O_RDWR); // the controlling terminal
    if (s < 0) { printf("setup failed: open slave\n"); _exit(2); }
    pid_t gc = fork();
    if (gc == 0) {
      setpgid(0, 0);
      for (;;) pause();
    }
    setpgid(gc, gc);
    signal(SIGTTOU, SIG_IGN);
    if (tcsetpgrp(s, gc)) { printf("setup failed: tcsetpgrp\n"); _exit(2); }
    signal(SIGTTOU, SIG_DFL);
    if (write(s, "OUTPUT-QUEUED\n", 14) != 14) _exit(2);
    if (write(sync[1], "x", 1) != 1) _exit(2);
    close(sync[1]);
    wait_go();
    if (getsid(0) != getpid()) fail("session", getsid(0), getpid());
    if (tcgetpgrp(s) != gc) fail("foreground group", tcgetpgrp(s), gc);
    if (tcgetsid(s) != getpid()) fail("terminal session", tcgetsid(s), getpid());
    int tty = open("/dev/tty", O_RDWR);
    if (tty < 0) fail("open /dev/tty", errno, 0);
    // Back to the foreground to read (a background group may not).
    signal(SIGTTOU, SIG_IGN);
    tcsetpgrp(s, getpid());
    int n = 0;
    ioctl(s, FIONREAD, &n);
    if (n != 12) fail("input queued", n, 12);
    char buf[64] = {0};
    ssize_t r = read(s, buf, sizeof buf - 1);
    if (r != 12 || memcmp(buf, "INPUT-QUEUED", 12)) { printf("FAIL input read: %zd '%s' (%s)\n", r, buf, strerror(errno)); fails++; }
    struct termios st;
    tcgetattr(s, &st);
    if (st.c_cc[VINTR] != 7) fail("VINTR", st.c_cc[VINTR], 7);
    kill(gc, SIGKILL);
    waitpid(gc, NULL, 0);
    printf(fails ? "slave FAIL\n" : "slave ok\n");
    _exit(fails ? 1 : 0);
  }
  close(sync[1]);
  char c;
  if (read(sync[0], &c, 1) != 1) { printf("setup failed: child\n"); return 2; }
  close(sync[0]);
  if (write(m, "INPUT-QUEUED", 12) != 12) return 2;
  // Both queues filled: the kernel moves the bytes in a worker; wait until they are there.
  for (int i = 0; i < 1000; i++) {
    int n = 0;
    ioctl(m, FIONREAD, &n);
    if (n == 15) break;
    usleep(1000);
  }
  printf("ready\n");
  wait_go();
  struct termios now;
  tcgetattr(m, &now);
  if (now.c_lflag & (ICANON | ECHO)) fail("lflag", now.c_lflag, t.c_lflag);
  if (now.c_cc[VINTR] != 7) fail("VINTR", now.c_cc[VINTR], 7);
  if (cfgetospeed(&now) != B9600) fail("speed", cfgetospeed(&now), B9600);
  struct winsize w2;
  ioctl(m, TIOCGWINSZ, &w2);
  if (w2.ws_row != 33 || w2.ws_col != 101 || w2.ws_xpixel != 7 || w2.ws_ypixel != 9) fail("winsize rows", w2.ws_row, 33);
  int pkt = 0;
  ioctl(m, TIOCGPKT, &pkt);
  if (!pkt) fail("packet mode", pkt, 1);
  char buf[64] = {0};
  ssize_t r = read(m, buf, sizeof buf - 1);
  if (r != 16 || buf[0] != 0 || memcmp(buf + 1, "OUTPUT-QUEUED\r\n", 15)) { printf("FAIL output read: %zd '%s'\n", r, buf + 1); fails++; }
  printf(fails ? "master FAIL\n" : "master ok\n");
  kill(child, SIGUSR1);
  int status;
  waitpid(child, &status, 0);
  printf("done\n");
  return fails || status ? 1 : 0;
}
