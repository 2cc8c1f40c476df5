// producer N: writes N numbered deterministic lines as fast as stdout takes them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
    char line[128];
    for (long i = 0; i < n; i++) {
        int len = snprintf(line, sizeof line, "line %06ld ", i);
        for (int k = 0; k < 40; k++) line[len++] = 'a' + (char)((i * 7 + k * 13) % 26);
        line[len++] = '\n';
        for (int off = 0; off < len;) {
            ssize_t w = write(1, line + off, len - off);
            if (w < 0) return 2;
            off += (int)w;
        }
    }
    return 0;
}
