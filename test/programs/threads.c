// build: -pthread
// threads: 8 threads. Five count under a shared mutex (500 steps, 2 ms
// apart), one waits on a condvar, one blocks on a mutex main holds, one
// sleeps 1.5 s in one nanosleep. "ready" once all are in place.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cv_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int go, waiting, counters_started;
static pid_t mutex_tid, sleeper_tid;
static long counts[5];

static void say(const char *s) { (void)!write(1, s, strlen(s)); }

static void nap(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
}

/* Wait until thread tid (of this process) has published itself, then until
 * it is asleep: after publishing, the only thing it can sleep in is the
 * blocking call it is there for (the mutex, or the nanosleep). */
static void await_asleep(pid_t *tidp)
{
    pid_t tid;
    while ((tid = __atomic_load_n(tidp, __ATOMIC_SEQ_CST)) == 0) nap(1000000);
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    for (;;) {
        FILE *f = fopen(path, "re");
        if (!f) { say("FAIL: no stat for thread\n"); exit(1); }
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        char *p = strrchr(buf, ')');
        if (p && p[1] == ' ' && p[2] == 'S') return;
        nap(1000000);
    }
}

static void *counter(void *arg)
{
    long id = (long)arg;
    char name[16];
    snprintf(name, sizeof name, "counter-%ld", id);
    pthread_setname_np(pthread_self(), name);
    __atomic_add_fetch(&counters_started, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&count_lock);
        counts[id]++;
        pthread_mutex_unlock(&count_lock);
        nap(2000000);
    }
    return NULL;
}

static void *cond_waiter(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "condvar");
    pthread_mutex_lock(&cv_lock);
    waiting = 1;
    while (!go) pthread_cond_wait(&cv, &cv_lock);
    pthread_mutex_unlock(&cv_lock);
    return NULL;
}

static void *mutex_waiter(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "mutex");
    __atomic_store_n(&mutex_tid, gettid(), __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&held);
    pthread_mutex_unlock(&held);
    return NULL;
}

static void *sleeper(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sleeper");
    struct timespec a, b;
    __atomic_store_n(&sleeper_tid, gettid(), __ATOMIC_SEQ_CST);
    clock_gettime(CLOCK_MONOTONIC, &a);
    nap(1500000000L);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 1500000000L) say("FAIL: short sleep\n");
    return NULL;
}

int main(void)
{
    pthread_t t[8];
    pthread_mutex_lock(&held);
    int err = 0;
    for (long i = 0; i < 5; i++) err |= pthread_create(&t[i], NULL, counter, (void *)i);
    err |= pthread_create(&t[5], NULL, cond_waiter, NULL);
    err |= pthread_create(&t[6], NULL, mutex_waiter, NULL);
    err |= pthread_create(&t[7], NULL, sleeper, NULL);
    if (err) { say("FAIL: pthread_create\n"); return 1; }
    // In place: the condvar waiter waiting, every counter started.
    for (;;) {
        pthread_mutex_lock(&cv_lock);
        int w = waiting;
        pthread_mutex_unlock(&cv_lock);
        if (w && __atomic_load_n(&counters_started, __ATOMIC_SEQ_CST) == 5) break;
        nap(1000000);
    }
    await_asleep(&mutex_tid);
    await_asleep(&sleeper_tid);
    say("ready\n");
    int joined = 0;
    for (int i = 0; i < 5; i++) joined += pthread_join(t[i], NULL) == 0;
    pthread_mutex_lock(&cv_lock);
    go = 1;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&cv_lock);
    pthread_mutex_unlock(&held);
    for (int i = 5; i < 8; i++) joined += pthread_join(t[i], NULL) == 0;
    char line[64];
    snprintf(line, sizeof line, "total %ld\n", counts[0] + counts[1] + counts[2] + counts[3] + counts[4]);
    say(line);
    snprintf(line, sizeof line, "joined %d\n", joined);
    say(line);
    say("done\n");
    return 0;
}
