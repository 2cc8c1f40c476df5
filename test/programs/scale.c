// scale MODE N PROGRESS: a target at the limits stasis is sized for, that
// checks itself over and over and counts full passes in PROGRESS (one
// number, rewritten in place). Prints "ready" once set up; any mismatch
// prints a "FAIL ..." line.
//
//   threads N  N threads in all (N-1 made with 64 KiB stacks); each keeps
//              a value on its own stack and counts its rounds (20 ms
//              apart); a pass needs every thread's count to have moved
//   vmas N     N VMAs in one region (and two PROT_NONE pages around it):
//              pages alternately read-write and
//              read-only, so none merge; every 16th writable page holds
//              its own index; a pass re-reads them and counts the region's
//              lines in /proc/self/maps
//   fds N      N more fds: /dev/null opened, a dup of it (one open file),
//              a file opened at its own offset, an eventfd with its own
//              counter, in turn; a pass checks each (kcmp for the dups)
//   tree N     N processes in all, ten children each (breadth first); each
//              counts its rounds (50 ms apart) in a shared page next to
//              its pid; a pass needs every count to have moved, the pids
//              unchanged
// build: -pthread
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static int progressFd;
static uint64_t passes;
static long n;

static void fail(const char *what, long a, long b) {
  printf("FAIL %s: %ld != %ld\n", what, a, b);
  fflush(stdout);
}

static void nap(long ms) {
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

static void passed(void) {
  char line[32];
  int len = snprintf(line, sizeof line, "%020llu\n", (unsigned long long)++passes);
  if (pwrite(progressFd, line, len, 0) != len) fail("progress write", len, errno);
}

// ---- threads ----------------------------------------------------------------

static volatile uint64_t *rounds;

static void *worker(void *arg) {
  long i = (long)arg;
  volatile long mine = i * 7919 + 13;
  for (;;) {
    if (mine != i * 7919 + 13) fail("thread stack value", mine, i * 7919 + 13);
    rounds[i]++;
    nap(20);
  }
  return NULL;
}

static uint64_t *snapshot(volatile uint64_t *c, long count) {
  uint64_t *s = malloc(count * sizeof *s);
  for (long i = 0; i < count; i++) s[i] = c[i];
  return s;
}

/** Wait until every counter moved past `before`, then count a pass. */
static void allMoved(volatile uint64_t *c, long first, long count) {
  uint64_t *before = snapshot(c, count);
  for (;;) {
    nap(50);
    long i = first;
    while (i < count && c[i] != before[i]) i++;
    if (i == count) break;
  }
  free(before);
  passed();
}

static void threads(void) {
  rounds = calloc(n, sizeof *rounds);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  for (long i = 1; i < n; i++) {
    pthread_t t;
    int r = pthread_create(&t, &attr, worker, (void *)i);
    if (r) { fail("pthread_create", r, 0); exit(3); }
  }
  printf("ready\n");
  fflush(stdout);
  for (;;) allMoved(rounds, 1, n);
}

// ---- vmas -------------------------------------------------------------------

static void vmas(void) {
  long page = sysconf(_SC_PAGESIZE);
  // Between two PROT_NONE pages: no neighbour merges into the region.
  char *all = mmap(NULL, (n + 2) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (all == MAP_FAILED) { fail("mmap", errno, 0); exit(3); }
  char *region = all + page;
  mprotect(all, page, PROT_NONE);
  mprotect(region + n * page, page, PROT_NONE);
  for (long i = 0; i < n; i++) {
    if (i % 2 == 0 && i % 32 == 0) *(long *)(region + i * page) = i;
    if (i % 2 == 1 && mprotect(region + i * page, page, PROT_READ) != 0) { fail("mprotect", i, errno); exit(3); }
  }
  printf("ready\n");
  fflush(stdout);
  size_t cap = 1 << 20;
  char *maps = malloc(cap);
  for (;;) {
    for (long i = 0; i < n; i += 2) {
      long want = i % 32 == 0 ? i : 0;
      if (*(long *)(region + i * page) != want) fail("page content", *(long *)(region + i * page), want);
    }
    // The region's lines in maps: exactly n, alternating rw-p and r--p.
    int fd = open("/proc/self/maps", O_RDONLY);
    size_t len = 0;
    for (;;) {
      if (len == cap) maps = realloc(maps, cap *= 2);
      ssize_t r = read(fd, maps + len, cap - len);
      if (r <= 0) break;
      len += r;
    }
    close(fd);
    long lines = 0, wrong = 0;
    unsigned long lo = (unsigned long)region, hi = lo + n * page;
    for (char *p = maps; p < maps + len; ) {
      char *end = memchr(p, '\n', maps + len - p);
      if (!end) break;
      unsigned long s = strtoul(p, NULL, 16);
      if (s >= lo && s < hi) {
        char *perm = strchr(p, ' ') + 1;
        int writable = ((s - lo) / page) % 2 == 0;
        if (strncmp(perm, writable ? "rw-p" : "r--p", 4) != 0) wrong++;
        lines++;
      }
      p = end + 1;
    }
    if (lines != n) fail("VMAs in the region", lines, n);
    if (wrong) fail("VMAs with the wrong protection", wrong, 0);
    passed();
    nap(200);
  }
}

// ---- fds --------------------------------------------------------------------

static void fds(const char *dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/scale-file", dir);
  int data = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (data < 0 || ftruncate(data, 1 << 20) != 0) { fail("data file", errno, 0); exit(3); }
  close(data);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  int first = -1;
  for (long i = 0; i < n; i++) {
    int fd;
    switch (i % 4) {
    case 0: fd = open("/dev/null", O_RDWR); break;
    case 1: fd = dup(first + (int)i - 1); break;
    case 2: fd = open(path, O_RDONLY); if (fd >= 0) lseek(fd, i, SEEK_SET); break;
    default: fd = eventfd(i, 0); break;
    }
    if (fd < 0) { fail("opening fd", i, errno); exit(3); }
    if (first < 0) first = fd;
    if (fd != first + i) { fail("fd number", fd, first + i); exit(3); }
  }
  printf("ready\n");
  fflush(stdout);
  pid_t me = getpid();
  for (;;) {
    for (long i = 0; i < n; i++) {
      int fd = first + (int)i;
      struct stat st;
      if (fstat(fd, &st) != 0) { fail("fstat", fd, errno); continue; }
      switch (i % 4) {
      case 0: if (!S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3)) fail("/dev/null", fd, 0); break;
      case 1: if (syscall(SYS_kcmp, me, me, 0 /* KCMP_FILE */, fd - 1, fd) != 0) fail("dup shares its open file", fd, fd - 1); break;
      case 2: if (lseek(fd, 0, SEEK_CUR) != i) fail("file offset", lseek(fd, 0, SEEK_CUR), i); break;
      default: {
        uint64_t v = 0;
        if (read(fd, &v, 8) != 8 || (long)v != i) fail("eventfd counter", (long)v, i);
        v = i;
        if (write(fd, &v, 8) != 8) fail("eventfd write", fd, errno);
      }
      }
    }
    passed();
    nap(200);
  }
}

// ---- tree -------------------------------------------------------------------

struct slot { volatile uint64_t rounds; volatile pid_t pid; };
static struct slot *slots;

static void member(long k) {
  slots[k].pid = getpid();
  for (long c = 10 * k + 1; c <= 10 * k + 10 && c < n; c++) {
    pid_t p = fork();
    if (p < 0) { fail("fork", c, errno); exit(3); }
    if (p == 0) { member(c); exit(0); }
  }
  if (k == 0) return;
  for (;;) {
    if (slots[k].pid != getpid()) fail("pid", getpid(), slots[k].pid);
    slots[k].rounds++;
    nap(50);
  }
}

static void tree(void) {
  slots = mmap(NULL, n * sizeof *slots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slots == MAP_FAILED) { fail("mmap", errno, 0); exit(3); }
  member(0);
  // Everyone in place: every slot has its pid and has counted.
  for (long k = 1; k < n; k++) while (!slots[k].pid || !slots[k].rounds) nap(5);
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    uint64_t *before = malloc(n * sizeof *before);
    for (long k = 1; k < n; k++) before[k] = slots[k].rounds;
    for (long k = 1; k < n; k++) {
      while (slots[k].rounds == before[k]) nap(10);
    }
    free(before);
    passed();
  }
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  n = atol(argv[2]);
  progressFd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (progressFd < 0 || n < 1) return 2;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", argv[3]);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0; else strcpy(dir, ".");
  if (!strcmp(argv[1], "threads")) threads();
  else if (!strcmp(argv[1], "vmas")) vmas();
  else if (!strcmp(argv[1], "fds")) fds(dir);
  else if (!strcmp(argv[1], "tree")) tree();
  return 2;
}
