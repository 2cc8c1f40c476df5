// A freeze that is safe to abandon. While a tree sits in stasis's freezer
// cgroup, a tiny shell outlives stasis and watches a pipe that only stasis
// can write: it learns each task's own cgroup as stasis moves it in. If the
// pipe ends without "done" (stasis was killed, OOM, crashed), it thaws the
// cgroup at once, moves every task back where it came from (any task it was
// not told about goes to the root cgroup, as thawStale does) and removes the
// cgroup. The kernel itself detaches a dead tracer's tracees.
import fs from 'node:fs';
import { memfdCreate, posixSpawn, syscall, waitpidSync } from '../sys/libc';
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

export class FreezeWatchdog {
  private fd: number;
  private readonly pid: number;

  private constructor(fd: number, pid: number) {
    this.fd = fd;
    this.pid = pid;
  }

  /** Start watching over `cgroupDir` (before any task is moved into it). */
  static start(cgroupDir: string): FreezeWatchdog {
    const fds = Buffer.alloc(8);
    // close-on-exec: no other child of ours may hold the write end open
    syscall(SYS_PIPE2, 'pipe2', fds, O_CLOEXEC);
    const [r, w] = [fds.readInt32LE(0), fds.readInt32LE(4)];
    const nul = fs.openSync('/dev/null', 'r+');
    try {
      // Its own session: a signal to stasis's terminal or group spares it.
      const pid = posixSpawn('/bin/sh', ['stasis-watchdog', '-c', SCRIPT, cgroupDir], { fds: { 0: r, 1: nul, 2: nul }, setsid: true, closeFrom: 3, env: ['PATH=/usr/bin:/bin'] });
      return new FreezeWatchdog(w, pid);
    } catch (e) {
      fs.closeSync(w);
      throw e;
    } finally {
      fs.closeSync(r);
      fs.closeSync(nul);
    }
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
// to a pipe whose reader stopped), so the deadline is kept by a worker
// thread: on expiry it names the timeout on stderr, removes the partial
// image and ends the whole process. That is safe by design: the kernel
// detaches every tracee of a dead tracer, injected code finds its own way
// home and the freeze watchdog thaws the cgroup.
const DEADLINE_WORKER = `
const { workerData } = require('node:worker_threads');
const fs = require('node:fs');
const flag = new Int32Array(workerData.flag);
if (Atomics.wait(flag, 0, 0, workerData.ms) === 'timed-out') {
  try { fs.writeSync(2, workerData.message + '\\n'); } catch {}
  if (workerData.partial) try { fs.rmSync(workerData.partial, { force: true }); } catch {}
  require(workerData.koffi).load('libc.so.6').func('void _exit(int)')(1);
}`;

export class FreezeDeadline {
  private readonly flag = new SharedArrayBuffer(4);

  /** End this process with `message` unless done() comes within `ms`. */
  constructor(ms: number, message: string, partial?: string) {
    // Loaded here only: most checkpoints from the library set no deadline.
    const { Worker } = require('node:worker_threads') as typeof import('node:worker_threads');
    const w = new Worker(DEADLINE_WORKER, { eval: true, workerData: { flag: this.flag, ms, message, partial, koffi: require.resolve('koffi') } });
    w.unref();
  }

  done(): void {
    const a = new Int32Array(this.flag);
    Atomics.store(a, 0, 1);
    Atomics.notify(a, 0);
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
