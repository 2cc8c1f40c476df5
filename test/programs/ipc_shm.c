// System V shared memory across a restart. A segment with the key given
// in argv[1] (hex), 3 pages minus a bit, mode 0640, written with a
// pattern, its last page made read-only with mprotect; an IPC_PRIVATE
// segment attached twice (read-write and SHM_RDONLY) and removed with
// IPC_RMID while attached. Prints "ready" and the addresses; on SIGUSR1
// checks addresses, key, size, mode, removal, attach counts, contents and
// that both attachments are still one segment; "ok" or "FAIL ..." lines.
// With "partial" as argv[2] the middle page of the keyed attachment is
// unmapped (refused by stasis).
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/shm.h>

static int failures;
#define FAIL(...) do { printf("FAIL "); printf(__VA_ARGS__); printf("\n"); failures++; } while (0)
#define MUST(call) do { if ((long)(call) < 0) { printf("setup failed: %s: %s\n", #call, strerror(errno)); exit(2); } } while (0)
#define SIZE 12000

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }

static char pattern(int i) { return (char)(i * 7 + 3); }

/** The permissions maps shows for the mapping holding p ("rw-s"). */
static void perms_at(void *p, char out[5])
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    strcpy(out, "none");
    while (f && fgets(line, sizeof line, f)) {
        unsigned long a, b;
        char perm[5];
        if (sscanf(line, "%lx-%lx %4s", &a, &b, perm) == 3 && (unsigned long)p >= a && (unsigned long)p < b) { strcpy(out, perm); break; }
    }
    if (f) fclose(f);
}

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    key_t key = (key_t)strtoul(argv[1], NULL, 16);
    signal(SIGUSR1, on_usr1);
    int id = shmget(key, SIZE, IPC_CREAT | IPC_EXCL | 0640);
    MUST(id);
    char *a = shmat(id, NULL, 0);
    MUST(a == (void *)-1 ? -1 : 0);
    for (int i = 0; i < SIZE; i++) a[i] = pattern(i);
    MUST(mprotect(a + 8192, 4096, PROT_READ));
    int pid2 = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
    MUST(pid2);
    char *rw = shmat(pid2, NULL, 0), *ro = shmat(pid2, NULL, SHM_RDONLY);
    MUST(rw == (void *)-1 || ro == (void *)-1 ? -1 : 0);
    strcpy(rw + 5000, "private and removed");
    MUST(shmctl(pid2, IPC_RMID, NULL));
    if (argc > 2 && !strcmp(argv[2], "partial")) MUST(munmap(a + 4096, 4096));
    // The kernel counts attached VMAs: the mprotect split counts twice.
    struct shmid_ds before;
    MUST(shmctl(id, IPC_STAT, &before));
    unsigned long keyed_nattch = before.shm_nattch;
    printf("ready %d %d %p %p %p\n", id, pid2, (void *)a, (void *)rw, (void *)ro);
    fflush(stdout);
    while (!go) pause();

    struct shmid_ds ds;
    if (shmctl(id, IPC_STAT, &ds) < 0) FAIL("keyed segment %d: %s", id, strerror(errno));
    else {
        if (ds.shm_perm.__key != key) FAIL("key 0x%x, expected 0x%x", ds.shm_perm.__key, key);
        if (ds.shm_segsz != SIZE) FAIL("size %zu", ds.shm_segsz);
        if ((ds.shm_perm.mode & 0777) != 0640 || (ds.shm_perm.mode & SHM_DEST)) FAIL("keyed mode %o", ds.shm_perm.mode);
        if (ds.shm_nattch != keyed_nattch) FAIL("keyed nattch %lu, expected %lu", (unsigned long)ds.shm_nattch, keyed_nattch);
    }
    if (shmget(key, 0, 0) != id) FAIL("key 0x%x does not find segment %d", key, id);
    for (int i = 0; i < SIZE; i++) if (a[i] != pattern(i)) { FAIL("keyed contents differ at %d", i); break; }
    char perm[5];
    perms_at(a, perm);
    if (strcmp(perm, "rw-s")) FAIL("first page %s", perm);
    perms_at(a + 8192, perm);
    if (strcmp(perm, "r--s")) FAIL("last page %s", perm);
    if (shmctl(pid2, IPC_STAT, &ds) < 0) FAIL("private segment %d: %s", pid2, strerror(errno));
    else {
        if (ds.shm_perm.__key != IPC_PRIVATE || !(ds.shm_perm.mode & SHM_DEST) || (ds.shm_perm.mode & 0777) != 0600) FAIL("private key 0x%x mode %o", ds.shm_perm.__key, ds.shm_perm.mode);
        if (ds.shm_nattch != 2) FAIL("private nattch %lu", (unsigned long)ds.shm_nattch);
    }
    if (strcmp(ro + 5000, "private and removed")) FAIL("private contents through the read-only attachment");
    perms_at(ro, perm);
    if (strcmp(perm, "r--s")) FAIL("read-only attachment %s", perm);
    strcpy(rw + 6000, "still one segment");
    if (strcmp(ro + 6000, "still one segment")) FAIL("the two attachments are not one segment");
    a[0] = 1;
    shmdt(a);
    shmctl(id, IPC_RMID, NULL);
    printf(failures ? "done with failures\n" : "ok\n");
    return failures ? 1 : 0;
}
