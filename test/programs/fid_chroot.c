// fid_chroot MODE: the process chroots into ./jail (made here, holding
// "marker" and "home/"), then "ready". MODE "inside": cwd /home inside the
// jail; "outside": chroot without chdir, cwd stays outside the new root.
// On SIGUSR1 (after restart) it checks the root (the marker is at /marker)
// and the cwd (inside: getcwd is /home; outside: a relative open of
// "jail/marker" still works); prints "ok" or "FAIL: <what>", exits 0/1.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void onusr1(int s) { (void)s; go = 1; }
static void say(const char *s) { (void)!write(1, s, strlen(s)); }

int main(int argc, char **argv)
{
    int inside = argc > 1 && !strcmp(argv[1], "inside");
    sigset_t usr1, none;
    sigemptyset(&usr1);
    sigemptyset(&none);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    signal(SIGUSR1, onusr1);
    mkdir("jail", 0755);
    mkdir("jail/home", 0755);
    int m = open("jail/marker", O_CREAT | O_WRONLY, 0644);
    if (m < 0) { say("FAIL: marker\n"); return 2; }
    close(m);
    if (chroot("jail")) { say("FAIL: chroot\n"); return 2; }
    if (inside && chdir("/home")) { say("FAIL: chdir\n"); return 2; }
    say("ready\n");
    while (!go) sigsuspend(&none);
    int ok = 1;
    if (access("/marker", F_OK)) { say("FAIL: root is not the jail\n"); ok = 0; }
    char cwd[256];
    if (inside && (!getcwd(cwd, sizeof cwd) || strcmp(cwd, "/home"))) { say("FAIL: cwd\n"); ok = 0; }
    if (!inside && access("jail/marker", F_OK)) { say("FAIL: cwd outside the root\n"); ok = 0; }
    if (ok) say("ok\n");
    return !ok;
}
