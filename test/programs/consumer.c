// consumer: copies stdin to stdout in 256-byte reads, 1 ms apart, until EOF.
#include <errno.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    char buf[256];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 2;
        if (n == 0) return 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(1, buf + off, n - off);
            if (w < 0) return 2;
            off += w;
        }
        struct timespec ts = {0, 1000000};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) ;
    }
}
