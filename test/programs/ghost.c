// ghost DIR: deleted files held by a parent and its child. DIR/ghost.dat
// (1 MiB with a hole, data at 0 and 512 KiB) held as an fd, mapped shared
// and mapped private (one page written: a private copy), then unlinked;
// DIR/offset.dat held read-only at offset 100, unlinked; three POSIX
// semaphores (sem_open: mappings of deleted /dev/shm/sem.* files once
// sem_unlink'ed), "value" at 4, "go" at 0, "started"; POSIX shared memory
// (shm_open, shm_unlink'ed, its fd closed: mapped only); a named semaphore
// left linked ("named" at 2: its mapping names glibc's removed temporary
// file, the semaphore's name links it still). The child blocks
// in sem_wait(go); "ready" once it does. On SIGUSR1 the parent checks its
// view (contents, offset, link count 0, "(deleted)" links, semaphore
// value), writes through the shared mapping, the fd and the shm, and posts
// "go"; the child checks it sees those writes in the same files, writes
// back, and exits; the parent checks the child's writes, prints "ok".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PAGE 4096
#define SIZE (1 << 20)
#define MUST(call) do { if ((call) < 0) { printf("setup failed: %s: %s\n", #call, strerror(errno)); exit(2); } } while (0)

static int failures;
static void fail(const char *who, const char *what) { printf("FAIL %s: %s\n", who, what); failures++; }
#define EXPECT(who, cond) do { if (!(cond)) fail(who, #cond); } while (0)

static int fd, fd2;
static char *shared, *priv, *shm;
static sem_t *value, *go, *started, *named;
static char name[256];

static volatile sig_atomic_t usr1;
static void on_usr1(int sig) { (void)sig; usr1 = 1; }

static int deleted_link(int f, const char *want)
{
    char path[64], link[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", f);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) return 0;
    link[n] = 0;
    char expect[512];
    snprintf(expect, sizeof expect, "%s (deleted)", want);
    return strcmp(link, expect) == 0;
}

static int nlink(int f)
{
    struct stat st;
    return fstat(f, &st) < 0 ? -1 : (int)st.st_nlink;
}

/** What both processes check of the state set up before the checkpoint. */
static void common(const char *who)
{
    EXPECT(who, memcmp(shared, "shared-before", 13) == 0);
    EXPECT(who, memcmp(priv + PAGE, "private copy", 12) == 0);
    EXPECT(who, memcmp(priv, shared, 13) == 0);
    char buf[16] = {0};
    EXPECT(who, pread(fd, buf, 13, 512 * 1024) == 13 && memcmp(buf, "half-way-data", 13) == 0);
    EXPECT(who, pread(fd, buf, 4, 4 * PAGE) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0);
    struct stat st;
    EXPECT(who, fstat(fd, &st) == 0 && st.st_size == SIZE && (st.st_mode & 07777) == 0640);
    EXPECT(who, nlink(fd) == 0);
    EXPECT(who, deleted_link(fd, name));
    EXPECT(who, memcmp(shm, "posix shm", 9) == 0);
    int v = -1;
    EXPECT(who, sem_getvalue(value, &v) == 0 && v == 4);
    EXPECT(who, sem_getvalue(named, &v) == 0 && v == 2);
}

int main(int argc, char **argv)
{
    if (argc != 2) { fprintf(stderr, "usage: ghost DIR\n"); return 2; }
    setvbuf(stdout, NULL, _IONBF, 0);
    snprintf(name, sizeof name, "%s/ghost.dat", argv[1]);
    MUST(fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0640));
    MUST(fchmod(fd, 0640));
    MUST(ftruncate(fd, SIZE));
    MUST(pwrite(fd, "shared-before", 13, 0));
    MUST(pwrite(fd, "half-way-data", 13, 512 * 1024));
    shared = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    priv = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (shared == MAP_FAILED || priv == MAP_FAILED) { printf("setup failed: mmap\n"); return 2; }
    memcpy(priv + PAGE, "private copy", 12);
    MUST(unlink(name));

    char name2[300];
    snprintf(name2, sizeof name2, "%s/offset.dat", argv[1]);
    int w;
    MUST(w = open(name2, O_WRONLY | O_CREAT | O_EXCL, 0600));
    char block[300];
    for (int i = 0; i < 300; i++) block[i] = (char)i;
    MUST(write(w, block, 300));
    close(w);
    MUST(fd2 = open(name2, O_RDONLY));
    MUST(lseek(fd2, 100, SEEK_SET));
    MUST(unlink(name2));

    char sname[64];
    snprintf(sname, sizeof sname, "/stasis-ghost-%d-value", getpid());
    value = sem_open(sname, O_CREAT | O_EXCL, 0600, 5);
    sem_unlink(sname);
    snprintf(sname, sizeof sname, "/stasis-ghost-%d-go", getpid());
    go = sem_open(sname, O_CREAT | O_EXCL, 0600, 0);
    sem_unlink(sname);
    snprintf(sname, sizeof sname, "/stasis-ghost-%d-started", getpid());
    started = sem_open(sname, O_CREAT | O_EXCL, 0600, 0);
    sem_unlink(sname);
    char named_name[64];
    snprintf(named_name, sizeof named_name, "/stasis-ghost-%d-named", getpid());
    named = sem_open(named_name, O_CREAT | O_EXCL, 0600, 2);
    if (value == SEM_FAILED || go == SEM_FAILED || started == SEM_FAILED || named == SEM_FAILED) { printf("setup failed: sem_open\n"); return 2; }
    MUST(sem_wait(value));

    snprintf(sname, sizeof sname, "/stasis-ghost-%d-shm", getpid());
    int s;
    MUST(s = shm_open(sname, O_RDWR | O_CREAT | O_EXCL, 0600));
    MUST(ftruncate(s, 2 * PAGE));
    shm = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
    if (shm == MAP_FAILED) { printf("setup failed: mmap shm\n"); return 2; }
    close(s);
    MUST(shm_unlink(sname));
    memcpy(shm, "posix shm", 9);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    pid_t child = fork();
    if (child < 0) { printf("setup failed: fork\n"); return 2; }
    if (child == 0) {
        sem_post(started);
        while (sem_wait(go) < 0 && errno == EINTR) { }
        common("child");
        EXPECT("child", memcmp(shared + 100, "from parent", 11) == 0);
        EXPECT("child", memcmp(shm + PAGE, "parent shm", 10) == 0);
        char buf[16] = {0};
        EXPECT("child", pread(fd, buf, 9, 200) == 9 && memcmp(buf, "parent fd", 9) == 0);
        memcpy(shared + PAGE + 8, "from child", 10);
        memcpy(shm + 100, "child shm", 9);
        if (failures) return 1;
        printf("child ok\n");
        return 0;
    }
    while (sem_wait(started) < 0 && errno == EINTR) { }
    printf("ready\n");
    while (!usr1) pause();

    common("parent");
    char buf[16] = {0};
    EXPECT("parent", read(fd2, buf, 4) == 4 && memcmp(buf, "\x64\x65\x66\x67", 4) == 0);
    EXPECT("parent", nlink(fd2) == 0);
    int v = -1;
    EXPECT("parent", sem_getvalue(go, &v) == 0 && v == 0);
    memcpy(shared + 100, "from parent", 11);
    memcpy(shm + PAGE, "parent shm", 10);
    MUST(pwrite(fd, "parent fd", 9, 200));
    sem_post(go);
    int status;
    MUST(waitpid(child, &status, 0));
    EXPECT("parent", WIFEXITED(status) && WEXITSTATUS(status) == 0);
    EXPECT("parent", memcmp(shared + PAGE + 8, "from child", 10) == 0);
    EXPECT("parent", memcmp(shm + 100, "child shm", 9) == 0);
    char page1[16] = {0};
    EXPECT("parent", pread(fd, page1, 10, PAGE + 8) == 10 && memcmp(page1, "from child", 10) == 0);
    EXPECT("parent", memcmp(priv + PAGE + 8, "copy", 4) == 0); // its own copy, not the file's page
    sem_unlink(named_name);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}
