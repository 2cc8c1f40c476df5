// fid_memfdexe: copies its own executable into a memfd and runs it from
// there with fexecve; the new image prints "ready" and waits for SIGUSR1:
// "memfd exe ok".
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include "await_flag.h"

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

int main(int argc, char **argv)
{
    (void)argv;
    if (argc > 1) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
        say("ready\n");
        await_flag(&go);
        say("memfd exe ok\n");
        return 0;
    }
    int self = open("/proc/self/exe", O_RDONLY), mem = memfd_create("fid-exe", MFD_CLOEXEC);
    struct stat st;
    if (self < 0 || mem < 0 || fstat(self, &st)) return 2;
    if (sendfile(mem, self, NULL, st.st_size) != st.st_size) return 2;
    char *args[] = { "fid_memfdexe", "again", NULL }, *env[] = { NULL };
    fexecve(mem, args, env);
    return 2;
}
