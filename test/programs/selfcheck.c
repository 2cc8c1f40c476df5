// A target that checks itself while it is checkpointed (and while its
// checkpointer is killed): 64 MiB of memory checksummed over and over, a
// thread that keeps magic values in every general register and xmm0-15
// across a spin loop, one sleeping in clock_nanosleep (restarted through
// restart_syscall when interrupted) and one blocked in read() (restarted
// as -ERESTARTSYS). Any mismatch prints a FAIL line. Progress counters
// are written to the file given as argv[1]: "MEMROUNDS REGROUNDS SLEEPS".
// With argv[2] = N, N child processes are forked first: each checks the
// first MiB of the memory it still shares copy-on-write with its parent
// every 2 ms and counts its rounds in a shared anonymous page, and the
// progress line ends with their counters.
// build: -pthread
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define MEM (64u << 20)
static uint64_t *mem;
static uint64_t expected;
static volatile uint64_t memRounds, regRounds, sleeps;

static uint64_t checksum(void) {
  uint64_t s = 0;
  for (size_t i = 0; i < MEM / 8; i++) s = (s ^ mem[i]) * 0x100000001b3ull + i;
  return s;
}

static void fail(const char *what, uint64_t a, uint64_t b) {
  printf("FAIL %s: 0x%llx != 0x%llx\n", what, (unsigned long long)a, (unsigned long long)b);
  fflush(stdout);
}

static void *memChecker(void *arg) {
  (void)arg;
  for (;;) {
    uint64_t s = checksum();
    if (s != expected) fail("memory checksum", s, expected);
    memRounds++;
  }
  return NULL;
}

// Registers in and out of the spin loop (global: the asm names them).
uint64_t regWant[15], regGot[15], xWant[32], xGot[32], savedRbp;
volatile uint64_t spin;

static void *regChecker(void *arg) {
  (void)arg;
  for (uint64_t round = 1;; round++) {
    for (int i = 0; i < 15; i++) regWant[i] = 0x0101010101010101ull * (i + 1) ^ (round << 8);
    for (int i = 0; i < 32; i++) xWant[i] = 0x1111111111111111ull * (i % 15 + 1) ^ (round << 16) ^ i;
    spin = 200000;
    __asm__ volatile(
      "mov %%rbp, savedRbp(%%rip)\n"
      "movdqu xWant+0(%%rip), %%xmm0\n  movdqu xWant+16(%%rip), %%xmm1\n"
      "movdqu xWant+32(%%rip), %%xmm2\n movdqu xWant+48(%%rip), %%xmm3\n"
      "movdqu xWant+64(%%rip), %%xmm4\n movdqu xWant+80(%%rip), %%xmm5\n"
      "movdqu xWant+96(%%rip), %%xmm6\n movdqu xWant+112(%%rip), %%xmm7\n"
      "movdqu xWant+128(%%rip), %%xmm8\n movdqu xWant+144(%%rip), %%xmm9\n"
      "movdqu xWant+160(%%rip), %%xmm10\n movdqu xWant+176(%%rip), %%xmm11\n"
      "movdqu xWant+192(%%rip), %%xmm12\n movdqu xWant+208(%%rip), %%xmm13\n"
      "movdqu xWant+224(%%rip), %%xmm14\n movdqu xWant+240(%%rip), %%xmm15\n"
      "mov regWant+0(%%rip), %%rax\n mov regWant+8(%%rip), %%rbx\n mov regWant+16(%%rip), %%rcx\n"
      "mov regWant+24(%%rip), %%rdx\n mov regWant+32(%%rip), %%rsi\n mov regWant+40(%%rip), %%rdi\n"
      "mov regWant+48(%%rip), %%rbp\n mov regWant+56(%%rip), %%r8\n mov regWant+64(%%rip), %%r9\n"
      "mov regWant+72(%%rip), %%r10\n mov regWant+80(%%rip), %%r11\n mov regWant+88(%%rip), %%r12\n"
      "mov regWant+96(%%rip), %%r13\n mov regWant+104(%%rip), %%r14\n mov regWant+112(%%rip), %%r15\n"
      "1: decq spin(%%rip)\n jnz 1b\n"
      "mov %%rax, regGot+0(%%rip)\n mov %%rbx, regGot+8(%%rip)\n mov %%rcx, regGot+16(%%rip)\n"
      "mov %%rdx, regGot+24(%%rip)\n mov %%rsi, regGot+32(%%rip)\n mov %%rdi, regGot+40(%%rip)\n"
      "mov %%rbp, regGot+48(%%rip)\n mov %%r8, regGot+56(%%rip)\n mov %%r9, regGot+64(%%rip)\n"
      "mov %%r10, regGot+72(%%rip)\n mov %%r11, regGot+80(%%rip)\n mov %%r12, regGot+88(%%rip)\n"
      "mov %%r13, regGot+96(%%rip)\n mov %%r14, regGot+104(%%rip)\n mov %%r15, regGot+112(%%rip)\n"
      "movdqu %%xmm0, xGot+0(%%rip)\n  movdqu %%xmm1, xGot+16(%%rip)\n"
      "movdqu %%xmm2, xGot+32(%%rip)\n movdqu %%xmm3, xGot+48(%%rip)\n"
      "movdqu %%xmm4, xGot+64(%%rip)\n movdqu %%xmm5, xGot+80(%%rip)\n"
      "movdqu %%xmm6, xGot+96(%%rip)\n movdqu %%xmm7, xGot+112(%%rip)\n"
      "movdqu %%xmm8, xGot+128(%%rip)\n movdqu %%xmm9, xGot+144(%%rip)\n"
      "movdqu %%xmm10, xGot+160(%%rip)\n movdqu %%xmm11, xGot+176(%%rip)\n"
      "movdqu %%xmm12, xGot+192(%%rip)\n movdqu %%xmm13, xGot+208(%%rip)\n"
      "movdqu %%xmm14, xGot+224(%%rip)\n movdqu %%xmm15, xGot+240(%%rip)\n"
      "mov savedRbp(%%rip), %%rbp\n"
      ::: "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
    for (int i = 0; i < 15; i++) if (regGot[i] != regWant[i]) fail("general register", regGot[i], regWant[i]);
    for (int i = 0; i < 32; i++) if (xGot[i] != xWant[i]) fail("xmm register", xGot[i], xWant[i]);
    regRounds++;
  }
  return NULL;
}

static void *sleeper(void *arg) {
  (void)arg;
  struct timespec ts = { 0, 3 * 1000 * 1000 };
  for (;;) {
    int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
    if (r != 0) fail("clock_nanosleep", r, 0);
    sleeps++;
  }
  return NULL;
}

static int blockedPipe[2];

#define MAX_CHILDREN 16
#define CHILD_CHECKED (1u << 20)
static volatile uint64_t *childRounds;

static uint64_t checksumFirst(size_t bytes) {
  uint64_t s = 0;
  for (size_t i = 0; i < bytes / 8; i++) s = (s ^ mem[i]) * 0x100000001b3ull + i;
  return s;
}

static void child(int i) {
  uint64_t want = checksumFirst(CHILD_CHECKED);
  for (;;) {
    uint64_t s = checksumFirst(CHILD_CHECKED);
    if (s != want) fail("child memory checksum", s, want);
    childRounds[i]++;
    usleep(2000);
  }
}

static void *reader(void *arg) {
  (void)arg;
  char c;
  ssize_t n = read(blockedPipe[0], &c, 1);
  fail("read of a pipe nobody writes returned", n, errno);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 3;
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < MEM / 8; i++) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    mem[i] = x;
  }
  expected = checksum();
  int children = argc > 2 ? atoi(argv[2]) : 0;
  if (children < 0 || children > MAX_CHILDREN) return 6;
  childRounds = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (childRounds == MAP_FAILED) return 7;
  for (int i = 0; i < children; i++) {
    pid_t c = fork();
    if (c < 0) return 8;
    if (c == 0) child(i);
  }
  if (pipe(blockedPipe) != 0) return 4;
  int progress = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (progress < 0) return 5;
  pthread_t t;
  pthread_create(&t, NULL, memChecker, NULL);
  pthread_create(&t, NULL, regChecker, NULL);
  pthread_create(&t, NULL, sleeper, NULL);
  pthread_create(&t, NULL, reader, NULL);
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    char line[96 + 21 * MAX_CHILDREN];
    int n = snprintf(line, sizeof line, "%020llu %020llu %020llu", (unsigned long long)memRounds,
                     (unsigned long long)regRounds, (unsigned long long)sleeps);
    for (int i = 0; i < children; i++) n += snprintf(line + n, sizeof line - n, " %020llu", (unsigned long long)childRounds[i]);
    line[n++] = '\n';
    if (pwrite(progress, line, n, 0) != n) fail("progress write", n, errno);
    usleep(2000);
  }
}
