// build: -mavx512f
//
// fpu.c: checkpoint/restart target for the extended register state.
//
// In ONE inline asm block: load distinct patterns into zmm0..zmm31, the
// opmask registers k1..k7, 8 values onto the x87 stack (80-bit long doubles
// that need full extended precision), a non-default MXCSR and x87 control
// word; then raw syscall write(1, "ready\n", 6); then raw syscall pause(),
// which returns -EINTR once SIGUSR1 (handler does nothing, no SA_RESTART)
// arrives; then store everything back to memory.  After the asm block the
// values are compared in C.
//
// Protocol: "ready", (test sends SIGUSR1), then "ok" or "FAIL: <register>".
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define MXCSR_TEST 0xff80u  /* all exceptions masked, round toward zero, FTZ */
#define FCW_TEST 0x0f7fu    /* all exceptions masked, 64-bit precision, RC=toward zero */

struct state {
    uint64_t zin[32][8];    /* offset 0 */
    uint64_t zout[32][8];   /* offset 2048 */
    uint64_t kin[8];        /* index 1..7 used */
    uint64_t kout[8];
    long double fin[8];
    long double fout[8];
    const char *msg;
    long wret;
    long pret;
    uint32_t mxcsr_in, mxcsr_out, mxcsr_saved;
    uint16_t fcw_in, fcw_out, fcw_saved;
} __attribute__((aligned(64)));

static struct state st;

static void handler(int sig)
{
    (void)sig;
}

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void say(const char *s)
{
    size_t len = strlen(s);
    while (len > 0) {
        ssize_t n = write(1, s, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(2);
        }
        s += n;
        len -= (size_t)n;
    }
}

#define LZ(n) "vmovdqu64 %c[zin]+" #n "*64(%[s]), %%zmm" #n "\n\t"
#define SZ(n) "vmovdqu64 %%zmm" #n ", %c[zout]+" #n "*64(%[s])\n\t"
#define LK(n) "kmovq %c[kin]+" #n "*8(%[s]), %%k" #n "\n\t"
#define SK(n) "kmovq %%k" #n ", %c[kout]+" #n "*8(%[s])\n\t"
#define LF(n) "fldt %c[fin]+" #n "*16(%[s])\n\t"
#define SF(n) "fstpt %c[fout]+" #n "*16(%[s])\n\t"

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART */
    if (sigaction(SIGUSR1, &sa, NULL) < 0) {
        say("FAIL: sigaction\n");
        return 1;
    }

    for (int r = 0; r < 32; r++)
        for (int w = 0; w < 8; w++)
            st.zin[r][w] = splitmix((uint64_t)(r * 8 + w + 1));
    for (int k = 1; k < 8; k++)
        st.kin[k] = splitmix(0x1000u + (uint64_t)k);
    for (int f = 0; f < 8; f++)
        st.fin[f] = (f + 1.5L) / (3.0L + 2 * f) + (long double)f * 1e300L;
    st.msg = "ready\n";
    st.mxcsr_in = MXCSR_TEST;
    st.fcw_in = FCW_TEST;
    memset(st.zout, 0, sizeof st.zout);
    memset(st.fout, 0, sizeof st.fout);

    __asm__ volatile(
        /* control registers */
        "stmxcsr %c[mxs](%[s])\n\t"
        "fnstcw %c[fcws](%[s])\n\t"
        "ldmxcsr %c[mxi](%[s])\n\t"
        "fldcw %c[fcwi](%[s])\n\t"
        /* zmm0..31 */
        LZ(0) LZ(1) LZ(2) LZ(3) LZ(4) LZ(5) LZ(6) LZ(7)
        LZ(8) LZ(9) LZ(10) LZ(11) LZ(12) LZ(13) LZ(14) LZ(15)
        LZ(16) LZ(17) LZ(18) LZ(19) LZ(20) LZ(21) LZ(22) LZ(23)
        LZ(24) LZ(25) LZ(26) LZ(27) LZ(28) LZ(29) LZ(30) LZ(31)
        /* k1..k7 */
        LK(1) LK(2) LK(3) LK(4) LK(5) LK(6) LK(7)
        /* x87 stack: push fin[0..7]; afterwards st(0) = fin[7] */
        LF(0) LF(1) LF(2) LF(3) LF(4) LF(5) LF(6) LF(7)
        /* write(1, msg, 6) */
        "movl $1, %%eax\n\t"
        "movl $1, %%edi\n\t"
        "movq %c[msg](%[s]), %%rsi\n\t"
        "movl $6, %%edx\n\t"
        "syscall\n\t"
        "movq %%rax, %c[wret](%[s])\n\t"
        /* pause() */
        "movl $34, %%eax\n\t"
        "syscall\n\t"
        "movq %%rax, %c[pret](%[s])\n\t"
        /* store everything back */
        SZ(0) SZ(1) SZ(2) SZ(3) SZ(4) SZ(5) SZ(6) SZ(7)
        SZ(8) SZ(9) SZ(10) SZ(11) SZ(12) SZ(13) SZ(14) SZ(15)
        SZ(16) SZ(17) SZ(18) SZ(19) SZ(20) SZ(21) SZ(22) SZ(23)
        SZ(24) SZ(25) SZ(26) SZ(27) SZ(28) SZ(29) SZ(30) SZ(31)
        SK(1) SK(2) SK(3) SK(4) SK(5) SK(6) SK(7)
        /* pop: fout[0] = fin[7], ..., fout[7] = fin[0]; stack empty again */
        SF(0) SF(1) SF(2) SF(3) SF(4) SF(5) SF(6) SF(7)
        "stmxcsr %c[mxo](%[s])\n\t"
        "fnstcw %c[fcwo](%[s])\n\t"
        "ldmxcsr %c[mxs](%[s])\n\t"
        "fldcw %c[fcws](%[s])\n\t"
        :
        : [s] "r"(&st),
          [zin] "i"(offsetof(struct state, zin)),
          [zout] "i"(offsetof(struct state, zout)),
          [kin] "i"(offsetof(struct state, kin)),
          [kout] "i"(offsetof(struct state, kout)),
          [fin] "i"(offsetof(struct state, fin)),
          [fout] "i"(offsetof(struct state, fout)),
          [msg] "i"(offsetof(struct state, msg)),
          [wret] "i"(offsetof(struct state, wret)),
          [pret] "i"(offsetof(struct state, pret)),
          [mxi] "i"(offsetof(struct state, mxcsr_in)),
          [mxo] "i"(offsetof(struct state, mxcsr_out)),
          [mxs] "i"(offsetof(struct state, mxcsr_saved)),
          [fcwi] "i"(offsetof(struct state, fcw_in)),
          [fcwo] "i"(offsetof(struct state, fcw_out)),
          [fcws] "i"(offsetof(struct state, fcw_saved))
        : "rax", "rcx", "r11", "rdi", "rsi", "rdx", "memory", "cc",
          "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
          "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",
          "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
          "k1", "k2", "k3", "k4", "k5", "k6", "k7",
          "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");

    char buf[128];
    int bad = 0;
    if (st.wret != 6) {
        snprintf(buf, sizeof buf, "FAIL: write returned %ld\n", st.wret);
        say(buf);
        bad = 1;
    }
    if (st.pret != -EINTR) {
        snprintf(buf, sizeof buf, "FAIL: pause returned %ld\n", st.pret);
        say(buf);
        bad = 1;
    }
    for (int r = 0; r < 32; r++) {
        if (memcmp(st.zin[r], st.zout[r], 64) != 0) {
            snprintf(buf, sizeof buf, "FAIL: zmm%d\n", r);
            say(buf);
            bad = 1;
        }
    }
    for (int k = 1; k < 8; k++) {
        if (st.kin[k] != st.kout[k]) {
            snprintf(buf, sizeof buf, "FAIL: k%d\n", k);
            say(buf);
            bad = 1;
        }
    }
    for (int f = 0; f < 8; f++) {
        /* only the 10 bytes of the 80-bit value are meaningful */
        if (memcmp(&st.fout[f], &st.fin[7 - f], 10) != 0) {
            snprintf(buf, sizeof buf, "FAIL: st(%d)\n", f);
            say(buf);
            bad = 1;
        }
    }
    if (st.mxcsr_out != MXCSR_TEST) {
        snprintf(buf, sizeof buf, "FAIL: mxcsr %#x\n", st.mxcsr_out);
        say(buf);
        bad = 1;
    }
    if ((st.fcw_out & 0x1f3f) != (FCW_TEST & 0x1f3f)) {
        snprintf(buf, sizeof buf, "FAIL: x87 control word %#x\n", st.fcw_out);
        say(buf);
        bad = 1;
    }
    if (bad)
        return 1;
    say("ok\n");
    return 0;
}
