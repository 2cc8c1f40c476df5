// Shared frame of the fid_* fidelity programs: a second thread is made
// first and sets its own values (per-thread state), then the main thread
// sets its values; "ready" is printed; on SIGUSR1 the main thread checks
// its state, wakes the second thread (a byte on a pipe) to check its own,
// and prints "ok" or one "FAIL <what>" line per difference (exit 1).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static int fid_failures;
static void fail(const char *fmt, ...)
{
    va_list ap;
    char line[256];
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    printf("FAIL %s\n", line);
    __atomic_add_fetch(&fid_failures, 1, __ATOMIC_SEQ_CST);
}
#define EXPECT_EQ(what, got, want) do { long long g_ = (long long)(got), w_ = (long long)(want); \
    if (g_ != w_) fail("%s: %lld, expected %lld", what, g_, w_); } while (0)
/** A setup step that must work, or the program cannot test anything. */
#define MUST(call) do { if ((call) < 0) { printf("setup failed: %s: %s\n", #call, strerror(errno)); exit(2); } } while (0)

struct fid_spec {
    void (*set_thread)(void);
    void (*check_thread)(void);
    void (*set_main)(void);
    void (*check_main)(void);
};

static volatile sig_atomic_t fid_go;
static void fid_on_usr1(int sig) { (void)sig; fid_go = 1; }
static sem_t fid_set_done;
static int fid_wake[2];
static const struct fid_spec *fid_spec;

static void *fid_thread(void *arg)
{
    (void)arg;
    fid_spec->set_thread();
    sem_post(&fid_set_done);
    char c;
    while (read(fid_wake[0], &c, 1) != 1) { /* EINTR: again */ }
    fid_spec->check_thread();
    return NULL;
}

static int fid_run(const struct fid_spec *spec)
{
    fid_spec = spec;
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fid_on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old); // the second thread inherits it blocked
    MUST(pipe(fid_wake));
    sem_init(&fid_set_done, 0, 0);
    pthread_t th;
    if (spec->set_thread) {
        if (pthread_create(&th, NULL, fid_thread, NULL)) { printf("setup failed: pthread_create\n"); exit(2); }
        while (sem_wait(&fid_set_done)) { /* EINTR */ }
    }
    spec->set_main();
    printf("ready\n");
    while (!fid_go) sigsuspend(&old);
    spec->check_main();
    if (spec->set_thread) {
        MUST(write(fid_wake[1], "x", 1));
        pthread_join(th, NULL);
    }
    if (fid_failures) return 1;
    printf("ok\n");
    return 0;
}
