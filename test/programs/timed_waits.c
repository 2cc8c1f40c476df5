// timed_waits: threads that spend their life in system calls the kernel
// resumes through a restart_block: clock_nanosleep, nanosleep, poll with a
// timeout and a futex wait with a timeout. None is ever interrupted by a
// signal, so each must only ever return its normal result; anything else
// (an EINTR a restart made up) prints a FAIL line. Each round counts in
// argv[1]: "SLEEPS NANOSLEEPS POLLS FUTEXES".
// build: -pthread
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long rounds[4];
static int never_changes;

static void fail(const char *what, long got) {
  printf("FAIL %s returned %ld (errno %d)\n", what, got, errno);
  fflush(stdout);
}

static void *sleeper(void *arg) {
  (void)arg;
  struct timespec ts = { 0, 40 * 1000 * 1000 };
  for (;;) {
    int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
    if (r != 0) { errno = r; fail("clock_nanosleep", r); }
    rounds[0]++;
  }
  return NULL;
}

static void *poller(void *arg) {
  (void)arg;
  for (;;) {
    int r = poll(NULL, 0, 40);
    if (r != 0) fail("poll", r);
    rounds[2]++;
  }
  return NULL;
}

static void *waiter(void *arg) {
  (void)arg;
  struct timespec ts = { 0, 40 * 1000 * 1000 };
  for (;;) {
    long r = syscall(SYS_futex, &never_changes, FUTEX_WAIT_PRIVATE, 0, &ts, NULL, 0);
    if (r != -1 || errno != ETIMEDOUT) fail("futex wait", r);
    rounds[3]++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int progress = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (progress < 0) return 3;
  pthread_t t;
  pthread_create(&t, NULL, sleeper, NULL);
  pthread_create(&t, NULL, poller, NULL);
  pthread_create(&t, NULL, waiter, NULL);
  printf("ready\n");
  fflush(stdout);
  struct timespec ts = { 0, 40 * 1000 * 1000 };
  for (;;) {
    int r = nanosleep(&ts, NULL);
    if (r != 0) fail("nanosleep", r);
    rounds[1]++;
    char line[96];
    int n = snprintf(line, sizeof line, "%010lu %010lu %010lu %010lu\n", rounds[0], rounds[1], rounds[2], rounds[3]);
    if (pwrite(progress, line, n, 0) != n) return 4;
  }
}
