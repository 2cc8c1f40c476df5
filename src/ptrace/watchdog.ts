// A freeze that is safe to abandon. While a tree sits in stasis's freezer
// cgroup, a tiny shell outlives stasis and watches a pipe that only stasis
// can write: it learns each task's own cgroup as stasis moves it in. If the
// pipe ends without "done" (stasis was killed, OOM, crashed), it thaws the
// cgroup at once, moves every task back where it came from (any task it was
// not told about goes to the root cgroup, as thawStale does) and removes the
// cgroup. The kernel itself detaches a dead tracer's tracees.
import fs from 'node:fs';
import { posixSpawn, syscall, waitpidSync } from '../sys/libc';

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
