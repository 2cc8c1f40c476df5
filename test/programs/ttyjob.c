// A job of an interactive shell: `ready PID` into OUT, then each line read
// from its terminal (stdin) as `got: LINE`, until `quit`.
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  FILE *out = fopen(argv[1], "a");
  if (!out) return 2;
  setvbuf(out, NULL, _IONBF, 0);
  fprintf(out, "ready %d\n", (int)getpid());
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\n")] = 0;
    fprintf(out, "got: %s\n", line);
    if (!strcmp(line, "quit")) return 0;
  }
  fprintf(out, "eof\n");
  return 1;
}
