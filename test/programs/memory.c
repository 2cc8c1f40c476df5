// memory.c ITER DATAFILE SHAREDFILE
//
// Checkpoint/restart target exercising every kind of memory:
//   - heap buffer (malloc 3 MiB, from brk) + PRNG state (separate malloc)
//   - anonymous private mmap of 16 MiB, only every 4th page written
//   - PROT_NONE guard region (2 pages)
//   - MAP_PRIVATE RW mapping of DATAFILE (64 KiB); pages 0 and 2 are written,
//     the others still come from the file
//   - MAP_SHARED RW mapping of SHAREDFILE (64 KiB); word 0 holds a counter
//   - MAP_SHARED|MAP_ANONYMOUS region of 64 KiB
//   - 64 KiB array on main's stack
//
// Protocol: "ready", then "i <i> sum <hex>" per iteration (3 ms apart),
// then "done <hex>".  On inconsistency: "FAIL: <why>" and exit 1.
//
// Only word 0 of SHAREDFILE is ever written (= i+1 in iteration i), so the
// file's content after iteration i does not depend on iterations that ran
// after a checkpoint was taken (the file is not rolled back on restart).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WPP (PAGE / 8)              /* 64-bit words per page */
#define HEAP_SIZE (3u << 20)
#define ANON_SIZE (16u << 20)
#define FILE_SIZE (64u << 10)
#define SHANON_SIZE (64u << 10)
#define STACK_WORDS ((64u << 10) / 8)

static void write_all(const char *buf, size_t len)
{
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

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        _exit(2);
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    write_all(buf, (size_t)n);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out("FAIL: %s\n", buf);
    exit(1);
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

struct prng {
    uint64_t s;
};

static uint64_t xs(struct prng *p)
{
    uint64_t x = p->s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return p->s = x;
}

/* FNV-1a style hash over 64-bit words, with a fold so high bits mix down. */
static uint64_t hash_words(uint64_t h, const uint64_t *w, size_t nwords)
{
    for (size_t i = 0; i < nwords; i++) {
        h ^= w[i];
        h *= 0x100000001b3ULL;
        h ^= h >> 32;
    }
    return h;
}

static void *map_file(const char *path, int oflags, int mflags)
{
    int fd = open(path, oflags | O_CLOEXEC);
    if (fd < 0)
        fail("open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        fail("fstat %s: %s", path, strerror(errno));
    if (st.st_size < (off_t)FILE_SIZE)
        fail("%s is smaller than %u bytes", path, FILE_SIZE);
    void *p = mmap(NULL, FILE_SIZE, PROT_READ | PROT_WRITE, mflags, fd, 0);
    if (p == MAP_FAILED)
        fail("mmap %s: %s", path, strerror(errno));
    close(fd); /* the mapping is the only reference to the file */
    return p;
}

static void read_file(const char *path, void *buf)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail("reopen %s: %s", path, strerror(errno));
    size_t got = 0;
    while (got < FILE_SIZE) {
        ssize_t n = pread(fd, (char *)buf + got, FILE_SIZE - got, (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail("pread %s", path);
        got += (size_t)n;
    }
    close(fd);
}

/* Verify via /proc/self/maps that [addr, addr+len) is still a PROT_NONE mapping. */
static void check_guard(void *addr, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        fail("open /proc/self/maps");
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
            continue;
        if (lo <= (unsigned long)addr && (unsigned long)addr + len <= hi) {
            found = 1;
            if (strcmp(perms, "---p") != 0)
                fail("guard region has perms %s", perms);
        }
    }
    fclose(f);
    if (!found)
        fail("guard region is not mapped");
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ITER DATAFILE SHAREDFILE\n", argv[0]);
        return 2;
    }
    long iters = strtol(argv[1], NULL, 10);
    const char *datafile = argv[2], *sharedfile = argv[3];

    /* heap: raise the mmap threshold so the 3 MiB buffer comes from brk ([heap])
     * rather than from a separate anonymous mmap */
    mallopt(M_MMAP_THRESHOLD, 8 << 20);
    struct prng *rng = malloc(sizeof *rng);
    uint64_t *heap = malloc(HEAP_SIZE);
    if (!rng || !heap)
        fail("malloc");
    rng->s = 0x243f6a8885a308d3ULL;
    const size_t heap_words = HEAP_SIZE / 8;
    for (size_t i = 0; i < heap_words; i++)
        heap[i] = (uint64_t)i * 0x9e3779b97f4a7c15ULL ^ 0x5bd1e995ULL;

    /* anonymous private, only every 4th page touched */
    uint64_t *anon = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED)
        fail("mmap anon");
    /* keep untouched pages unpopulated even if THP is "always" */
    madvise(anon, ANON_SIZE, MADV_NOHUGEPAGE);
    const size_t anon_pages = ANON_SIZE / PAGE;
    for (size_t p = 0; p < anon_pages; p += 4)
        anon[p * WPP + (p % WPP)] = 0xa000000000000000ULL | p;

    /* guard region */
    void *guard = mmap(NULL, 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard == MAP_FAILED)
        fail("mmap guard");

    /* private file mapping: dirty pages 0 and 2 only */
    uint64_t *data = map_file(datafile, O_RDONLY, MAP_PRIVATE);
    for (size_t w = 0; w < WPP; w += 8) {
        data[0 * WPP + w] = 0xd0d0000000000000ULL | w;
        data[2 * WPP + w] = 0xd2d2000000000000ULL | w;
    }

    /* shared file mapping */
    uint64_t *shared = map_file(sharedfile, O_RDWR, MAP_SHARED);
    shared[0] = 0;

    /* shared anonymous */
    uint64_t *shanon = mmap(NULL, SHANON_SIZE, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shanon == MAP_FAILED)
        fail("mmap shared anon");
    const size_t shanon_words = SHANON_SIZE / 8;
    for (size_t i = 0; i < shanon_words; i++)
        shanon[i] = ~(uint64_t)i * 0xc2b2ae3d27d4eb4fULL;

    /* stack */
    uint64_t stackbuf[STACK_WORDS];
    for (size_t i = 0; i < STACK_WORDS; i++)
        stackbuf[i] = (uint64_t)i << 20 | 0x57ac;

    uint64_t sum = 0;
    out("ready\n");

    for (long i = 0; i < iters; i++) {
        heap[xs(rng) % heap_words] ^= xs(rng);
        size_t p = (xs(rng) % (anon_pages / 4)) * 4;
        anon[p * WPP + xs(rng) % WPP] += xs(rng);
        size_t dp = (xs(rng) & 1) ? 0 : 2;
        data[dp * WPP + xs(rng) % WPP] = xs(rng);
        shared[0] = (uint64_t)i + 1;
        shanon[xs(rng) % shanon_words] ^= xs(rng);
        stackbuf[xs(rng) % STACK_WORDS] += xs(rng);

        uint64_t h = 0xcbf29ce484222325ULL;
        h = hash_words(h, &rng->s, 1);
        h = hash_words(h, heap, heap_words);
        h = hash_words(h, anon, ANON_SIZE / 8);
        h = hash_words(h, data, FILE_SIZE / 8);
        h = hash_words(h, shared, FILE_SIZE / 8);
        h = hash_words(h, shanon, shanon_words);
        h = hash_words(h, stackbuf, STACK_WORDS);
        sum = h;
        out("i %ld sum %016" PRIx64 "\n", i, sum);
        sleep_ms(3);
    }

    /* consistency checks */
    check_guard(guard, 2 * PAGE);

    uint64_t *filebuf = malloc(FILE_SIZE);
    if (!filebuf)
        fail("malloc");
    read_file(datafile, filebuf);
    for (size_t pg = 0; pg < FILE_SIZE / PAGE; pg++) {
        if (pg == 0 || pg == 2)
            continue;
        if (memcmp(data + pg * WPP, filebuf + pg * WPP, PAGE) != 0)
            fail("private file mapping page %zu differs from file", pg);
    }
    if (iters > 0 && shared[0] != (uint64_t)iters)
        fail("shared counter is %" PRIu64 ", expected %ld", shared[0], iters);
    read_file(sharedfile, filebuf);
    if (memcmp(shared, filebuf, FILE_SIZE) != 0)
        fail("shared file mapping differs from file contents");
    free(filebuf);

    out("done %016" PRIx64 "\n", sum);
    return 0;
}
