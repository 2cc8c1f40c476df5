// A freeze that is safe to abandon. While a tree sits in stasis's freezer
// cgroup, a tiny shell outlives stasis and watches a pipe that only stasis
// can write: it learns each task's own cgroup as stasis moves it in. If the
// pipe ends without "done" (stasis was killed, OOM, crashed), it thaws the
// cgroup at once, moves every task back where it came from (any task it was
// not told about goes to the root cgroup, as thawStale does) and removes the
// cgroup. The kernel itself detaches a dead tracer's tracees.
import fs from 'node:fs';
import { memfdCreate, posixSpawn, syscall, waitpidSync, executableCode, startThread, addressOf } from '../sys/libc';
import { tinyElf } from './blank';

const FREEZER = '/sys/fs/cgroup/freezer';
const SYS_PIPE2 = 293;
const O_CLOEXEC = 0o2000000;

// $0: the cgroup directory. Lines: "home PID CGROUP" then "done".
const SCRIPT = `
homes=
while read -r what pid home; do
  case "$what" in
    done) exit 0 ;;
    home) homes="$homes $pid:$home" ;;
  esac
done
echo THAWED > "$0/freezer.state"
for x in $homes; do echo "\${x%%:*}" > "${FREEZER}\${x#*:}/cgroup.procs"; done
for p in $(cat "$0/cgroup.procs"); do echo "$p" > "${FREEZER}/cgroup.procs"; done
rmdir "$0"
`;

/**
 * A shell running `script` (with `args` as $0...) in its own session, so a
 * signal to stasis's terminal or group spares it, reading the pipe whose
 * write end is returned: only stasis holds it (close-on-exec, so no other
 * child of ours keeps it open), and its end tells the shell stasis is gone.
 */
export function spawnWatchdog(script: string, args: string[]): { pid: number; fd: number } {
  const fds = Buffer.alloc(8);
  syscall(SYS_PIPE2, 'pipe2', fds, O_CLOEXEC);
  const [r, w] = [fds.readInt32LE(0), fds.readInt32LE(4)];
  const nul = fs.openSync('/dev/null', 'r+');
  try {
    const pid = posixSpawn('/bin/sh', ['stasis-watchdog', '-c', script, ...args], { fds: { 0: r, 1: nul, 2: nul }, setsid: true, closeFrom: 3, env: ['PATH=/usr/bin:/bin'] });
    return { pid, fd: w };
  } catch (e) {
    fs.closeSync(w);
    throw e;
  } finally {
    fs.closeSync(r);
    fs.closeSync(nul);
  }
}

export class FreezeWatchdog {
  private fd: number;
  private readonly pid: number;

  private constructor(fd: number, pid: number) {
    this.fd = fd;
    this.pid = pid;
  }

  /** Start watching over `cgroupDir` (before any task is moved into it). */
  static start(cgroupDir: string): FreezeWatchdog {
    const { pid, fd } = spawnWatchdog(SCRIPT, [cgroupDir]);
    return new FreezeWatchdog(fd, pid);
  }

  /** Tell where a task goes back to, before it is moved in. */
  home(pid: number, cgroup: string): void {
    if (this.fd >= 0) fs.writeSync(this.fd, `home ${pid} ${cgroup}\n`);
  }

  /** Every task is home: the watchdog ends without touching anything. */
  done(): void {
    if (this.fd < 0) return;
    try {
      fs.writeSync(this.fd, 'done\n');
    } finally {
      fs.closeSync(this.fd);
      this.fd = -1;
      try { waitpidSync(this.pid, 0); } catch { /* reaped already */ }
    }
  }
}

// The freeze timeout. The image may block us anywhere (a synchronous write
// to a pipe whose reader stopped), so the deadline is kept by a thread of
// its own: on expiry it names the timeout on stderr, removes the partial
// image and ends the whole process. That is safe by design: the kernel
// detaches every tracee of a dead tracer, injected code finds its own way
// home and the freeze watchdog thaws the cgroup. The thread is a few
// instructions, not a Node worker: booting a worker cost every checkpoint
// command ~40 ms of CPU and ~35 ms of its time (bench/results.md).
//
// void deadline(struct { u32 done; u32 pad; struct timespec until; u64 msg,
//                        msg_len, path; } *b): until is CLOCK_MONOTONIC.
const DEADLINE_CODE = Buffer.from([
  0x53, //                            push rbx
  0x48, 0x89, 0xfb, //                mov rbx, rdi
  0x8b, 0x03, //                      wait: mov eax, [rbx]          (done?)
  0x85, 0xc0, //                      test eax, eax
  0x75, 0x5c, //                      jnz out
  0x48, 0x89, 0xdf, //                mov rdi, rbx
  0xbe, 0x89, 0x00, 0x00, 0x00, //    mov esi, 137                 (FUTEX_WAIT_BITSET_PRIVATE: an absolute monotonic time)
  0x31, 0xd2, //                      xor edx, edx                 (sleep while done == 0)
  0x4c, 0x8d, 0x53, 0x08, //          lea r10, [rbx+8]             (until)
  0x45, 0x31, 0xc0, //                xor r8d, r8d
  0x41, 0xb9, 0xff, 0xff, 0xff, 0xff, // mov r9d, -1                 (any bit)
  0xb8, 0xca, 0x00, 0x00, 0x00, //    mov eax, 202                 (futex)
  0x0f, 0x05, //                      syscall
  0x48, 0x83, 0xf8, 0x92, //          cmp rax, -110                (ETIMEDOUT?)
  0x75, 0xd6, //                      jne wait                     (woken, EINTR, EAGAIN: look again)
  0x8b, 0x03, //                      mov eax, [rbx]
  0x85, 0xc0, //                      test eax, eax
  0x75, 0x32, //                      jnz out                      (done at the last moment)
  0xbf, 0x02, 0x00, 0x00, 0x00, //    mov edi, 2
  0x48, 0x8b, 0x73, 0x18, //          mov rsi, [rbx+24]
  0x48, 0x8b, 0x53, 0x20, //          mov rdx, [rbx+32]
  0xb8, 0x01, 0x00, 0x00, 0x00, //    mov eax, 1                   (write the message to stderr)
  0x0f, 0x05, //                      syscall
  0x48, 0x8b, 0x7b, 0x28, //          mov rdi, [rbx+40]
  0x48, 0x85, 0xff, //                test rdi, rdi
  0x74, 0x07, //                      jz end
  0xb8, 0x57, 0x00, 0x00, 0x00, //    mov eax, 87                  (unlink the partial image)
  0x0f, 0x05, //                      syscall
  0xbf, 0x01, 0x00, 0x00, 0x00, //    end: mov edi, 1
  0xb8, 0xe7, 0x00, 0x00, 0x00, //    mov eax, 231                 (exit_group(1))
  0x0f, 0x05, //                      syscall
  0xeb, 0xf2, //                      jmp end
  0x31, 0xc0, //                      out: xor eax, eax
  0x5b, //                            pop rbx
  0xc3, //                            ret
]);
const SYS_FUTEX = 202, FUTEX_WAKE_PRIVATE = 129;
let deadlineCode: unknown;
/** Every deadline's block: the thread may read it until the process ends, so none is ever freed. */
const blocks: Buffer[] = [];

export class FreezeDeadline {
  private readonly block: Buffer;

  /** End this process with `message` unless done() comes within `ms`. */
  constructor(ms: number, message: string, partial?: string) {
    deadlineCode ??= executableCode(DEADLINE_CODE);
    const msg = Buffer.from(`${message}\n`, 'utf8');
    const path = partial === undefined ? undefined : Buffer.from(`${partial}\0`, 'utf8');
    // Off the V8 heap (never moved), with the message and path inside.
    const b = this.block = Buffer.allocUnsafeSlow(Math.max(4096, 64 + msg.length + (path?.length ?? 0)));
    blocks.push(b);
    b.fill(0, 0, 64);
    const until = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6)); // CLOCK_MONOTONIC, as futex wants
    b.writeBigInt64LE(until / 1_000_000_000n, 8);
    b.writeBigInt64LE(until % 1_000_000_000n, 16);
    const base = BigInt(addressOf(b));
    msg.copy(b, 64);
    b.writeBigUInt64LE(base + 64n, 24);
    b.writeBigUInt64LE(BigInt(msg.length), 32);
    if (path) {
      path.copy(b, 64 + msg.length);
      b.writeBigUInt64LE(base + 64n + BigInt(msg.length), 40);
    }
    startThread(deadlineCode, b, 'the freeze deadline');
  }

  done(): void {
    if (this.block.readUInt32LE(0)) return;
    this.block.writeUInt32LE(1, 0);
    syscall(SYS_FUTEX, 'futex(FUTEX_WAKE)', this.block, FUTEX_WAKE_PRIVATE, 1);
  }
}

// Connections held in TCP repair mode (checkpoint --tcp-established) must
// not stay that way if stasis dies: repair mode and the drop-all filter
// would stall them for good. Each held connection gets a guard before it
// enters repair mode: a tiny static program (below) holding a copy of the
// socket as its fd 3 and the read end of a pipe only stasis writes as its
// fd 0. A byte from stasis means "let go, touch nothing"; end of file
// (stasis died: the kernel closed its write end) makes the guard take the
// socket out of repair mode, set SO_REUSEADDR back when its argv says so,
// detach the filter, and exit.
//
//   mov r12, [rsp]            ; argc: 2 means SO_REUSEADDR goes back on
//   mov dword [rsp-8], 0
//   mov dword [rsp-4], 1
// again:
//   read(0, rsp-16, 1)        ; -EINTR: again; 1 byte: exit(0)
//   setsockopt(3, SOL_TCP, TCP_REPAIR, rsp-8, 4)
//   argc == 2: setsockopt(3, SOL_SOCKET, SO_REUSEADDR, rsp-4, 4)
//   setsockopt(3, SOL_SOCKET, SO_DETACH_FILTER, rsp-8, 4)
//   exit(0)
const GUARD_CODE = Buffer.from(
  '4c8b2424c74424f800000000c74424fc0100000031c031ff488d7424f0ba010000000f054883f8fc74ea4883f8017469' +
  'b836000000bf03000000be06000000ba130000004c8d5424f841b8040000000f054983fc027521b836000000bf0300' +
  '0000be01000000ba020000004c8d5424fc41b8040000000f05b836000000bf03000000be01000000ba1b0000004c8d' +
  '5424f841b8040000000f05b83c00000031ff0f05', 'hex');

let guardFd = -1;
const F_DUPFD_CLOEXEC = 1030, SYS_FCNTL = 72;

export class RepairGuards {
  private r = -1;
  private w = -1;
  private readonly pids: number[] = [];

  /** Guard `sock` (a copy of the connection, in this process) before it enters repair mode. */
  guard(sock: number, reuse: boolean): void {
    if (guardFd < 0) {
      guardFd = memfdCreate('stasis-repair-guard', 1 /* MFD_CLOEXEC */);
      fs.writeSync(guardFd, tinyElf(GUARD_CODE));
    }
    if (this.w < 0) {
      const fds = Buffer.alloc(8);
      syscall(SYS_PIPE2, 'pipe2', fds, O_CLOEXEC);
      [this.r, this.w] = [fds.readInt32LE(0), fds.readInt32LE(4)];
    }
    // dup2 onto the same number would keep close-on-exec: move it out of the way first.
    const src = sock === 3 ? syscall(SYS_FCNTL, 'fcntl(F_DUPFD_CLOEXEC)', sock, F_DUPFD_CLOEXEC, 10) : sock;
    try {
      // Its own session: a signal to stasis's terminal or group spares it.
      this.pids.push(posixSpawn(`/proc/${process.pid}/fd/${guardFd}`, reuse ? ['stasis-repair-guard', 'reuse'] : ['stasis-repair-guard'], { fds: { 0: this.r, 3: src }, setsid: true, closeFrom: 4, env: [] }));
    } finally {
      if (src !== sock) fs.closeSync(src);
    }
  }

  /** stasis let every connection go itself: each guard ends without touching its socket. */
  done(): void {
    if (this.w < 0) return;
    try {
      if (this.pids.length) fs.writeSync(this.w, Buffer.alloc(this.pids.length, 0x64));
    } finally {
      fs.closeSync(this.w);
      fs.closeSync(this.r);
      this.w = this.r = -1;
      for (const pid of this.pids.splice(0)) {
        try { waitpidSync(pid, 0); } catch { /* reaped already */ }
      }
    }
  }
}
