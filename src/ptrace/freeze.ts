// Stop a whole process tree at one instant. The cgroup v1 freezer stops
// every task at once; forks that raced with it are found by re-scanning the
// tree until it is stable; then every thread is seized with ptrace and the
// cgroup is thawed so each one enters its ptrace stop. Tasks go back to
// their own freezer cgroup before anything else happens. Where the freezer
// is not ours to write (an ordinary user), and for a tree of one process,
// ptrace alone stops the tree.
import fs from 'node:fs';
import path from 'node:path';
import { readStat, readStatus, listThreads, listChildren } from '../proc';
import { Tracee } from './tracee';
import { FreezeWatchdog } from './watchdog';
import { vdsoOf, LeftBehind, Range } from './gadget';
import { waitpidSync, sleepSync, syscall, killReleasing, __WALL } from '../sys/libc';
import { SYS, AFFINITY_BYTES } from '../sys/x86';
import { StasisError, UnsupportedError, SyscallError } from '../sys/errno';

const FREEZER = '/sys/fs/cgroup/freezer';
let serial = 0;

export interface FrozenProcess {
  pid: number;
  ppid: number;
  zombie: boolean;
  /** in a group stop (SIGSTOP and friends) when the checkpoint began */
  stopped: boolean;
  /** the signal of that group stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU), as its first ptrace stop reports it */
  stopSignal?: number;
  /** main thread first */
  threads: Tracee[];
  /** its vDSO (null: none; undefined: maps unreadable) */
  vdso?: Range | null;
}

/** Every process of the tree, parents before children (zombies included). */
export interface TreeEntry { pid: number; ppid: number; zombie: boolean; stopped: boolean }

export function scanTree(root: number): TreeEntry[] {
  const out: TreeEntry[] = [];
  const queue = [root];
  const seen = new Set<number>();
  while (queue.length) {
    const pid = queue.shift()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    let st;
    try {
      st = readStat(pid);
    } catch {
      if (pid === root) throw new StasisError(`pid ${root}: no such process`);
      continue; // exited and was reaped meanwhile
    }
    out.push({ pid, ppid: st.ppid, zombie: st.state === 'Z', stopped: st.state === 'T' });
    if (st.state === 'Z') continue;
    try {
      queue.push(...listChildren(pid));
    } catch {
      if (pid === root) throw new StasisError(`pid ${root}: no such process`);
      // exited since its stat was read: the next scan sees it as a zombie
    }
  }
  return out;
}

function freezerCgroupOf(pid: number): string | null {
  try {
    const line = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => /^\d+:freezer:/.test(l));
    return line ? line.replace(/^\d+:freezer:/, '') : null;
  } catch {
    return null;
  }
}

/**
 * Freezer cgroups left by a stasis process that died mid-checkpoint (only
 * SIGKILL can do that): their tasks are thawed and moved back to the root
 * freezer cgroup, where processes live unless someone put them elsewhere.
 * Returns the pids set free.
 */
export function thawStale(): number[] {
  const freed: number[] = [];
  let dirs: string[];
  try {
    dirs = fs.readdirSync(FREEZER).filter((d) => /^stasis-\d+-\d+$/.test(d));
  } catch {
    return freed;
  }
  for (const d of dirs) {
    const owner = Number(d.split('-')[1]);
    if (fs.existsSync(`/proc/${owner}`) && readStat(owner).state !== 'Z') continue; // still at work
    const dir = path.join(FREEZER, d);
    try {
      fs.writeFileSync(path.join(dir, 'freezer.state'), 'THAWED');
      for (const pid of fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          fs.writeFileSync(path.join(FREEZER, 'cgroup.procs'), pid);
          freed.push(Number(pid));
        } catch { /* exited */ }
      }
      fs.rmdirSync(dir);
    } catch { /* another stasis got there first */ }
  }
  return freed;
}

/** The freezer hierarchy exists and we may make cgroups in it (root does). */
function freezerWritable(): boolean {
  try {
    fs.accessSync(FREEZER, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The task is gone or dying (a zombie, or past the point where it can be traced). */
function exited(pid: number, tid: number): boolean {
  try {
    return /^[ZX]$/.test(readStat(tid).state) || /^[ZX]$/.test(readStat(pid).state);
  } catch {
    return true;
  }
}

/** PTRACE_SEIZE was refused: say why when we can tell (another owner, another tracer). */
function notOurs(pid: number): StasisError {
  let why = '';
  try {
    const st = readStatus(pid);
    if (st.uid[1] !== process.geteuid!()) why = ` (it belongs to uid ${st.uid[1]}, you are uid ${process.geteuid!()})`;
    else if (st.tracerPid) why = ` (it is already traced by pid ${st.tracerPid})`;
  } catch { /* gone */ }
  return new StasisError(`pid ${pid}: not allowed to trace it (EPERM)${why}: checkpoint your own untraced processes, or run as root`);
}

export class FrozenTree {
  readonly root: number;
  readonly processes: FrozenProcess[] = [];
  /** first to last task stopped, in milliseconds */
  freezeMs = 0;
  private cgroup: string | null = null;
  /** thaws and sends the tasks home if we die while they are in our cgroup */
  private watchdog?: FreezeWatchdog;
  private readonly home = new Map<number, string>();

  constructor(root: number) {
    this.root = root;
  }

  get tracees(): Tracee[] {
    return this.processes.flatMap((p) => p.threads);
  }

  /** Freeze, seize every thread, thaw into ptrace stops. Undoes itself on failure. */
  freeze(log: (m: string) => void): void {
    const freed = thawStale();
    if (freed.length) log(`thawed ${freed.length} task(s) left frozen by a stasis that was killed: ${freed.join(', ')}`);
    try {
      // One process needs no freezer to be stopped at one instant: its
      // threads are stopped by ptrace, and the scans find anything it forks
      // meanwhile. The freezer's cgroup moves wait for an RCU grace period
      // each (cgroup_threadgroup_rwsem): 6-20 ms of every small checkpoint.
      if (!freezerWritable()) this.freezeWithPtrace(log, 'no writable freezer cgroup');
      else if (scanTree(this.root).length === 1) this.freezeWithPtrace(log, 'one process');
      else this.freezeWithCgroup(log);
    } catch (e) {
      this.release(false);
      throw e;
    }
  }

  private writeState(state: 'FROZEN' | 'THAWED'): void {
    fs.writeFileSync(path.join(this.cgroup!, 'freezer.state'), state);
    if (state === 'THAWED') return;
    const until = Date.now() + 10000;
    while (fs.readFileSync(path.join(this.cgroup!, 'freezer.state'), 'utf8').trim() !== 'FROZEN') {
      if (Date.now() > until) throw new StasisError('the freezer cgroup did not reach FROZEN within 10 s (a task in uninterruptible sleep?)');
      sleepSync(1);
    }
  }

  private moveIn(pid: number): boolean {
    const home = freezerCgroupOf(pid);
    if (home === null) return false;
    this.watchdog?.home(pid, home);
    try {
      fs.writeFileSync(path.join(this.cgroup!, 'cgroup.procs'), String(pid));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
      throw new StasisError(`moving pid ${pid} into the freezer cgroup: ${(e as NodeJS.ErrnoException).code}`);
    }
    this.home.set(pid, home);
    return true;
  }

  private freezeWithCgroup(log: (m: string) => void): void {
    this.cgroup = path.join(FREEZER, `stasis-${process.pid}-${++serial}`);
    // The watchdog first: from the moment the cgroup exists, our death removes it.
    this.watchdog = FreezeWatchdog.start(this.cgroup);
    fs.mkdirSync(this.cgroup);
    // Move, freeze, re-scan: a task forked before its parent moved in is
    // not frozen; repeat until a scan of the frozen tree finds nothing new.
    for (let round = 0; ; round++) {
      const tree = scanTree(this.root);
      // A stopped task is left out of the freezer: it cannot run anyway, and
      // attaching to it needs it to move to a traced stop, which a frozen
      // task never does (PTRACE_SEIZE would wait forever).
      const fresh = tree.filter((p) => !p.zombie && !p.stopped && !this.home.has(p.pid));
      if (!fresh.length && round > 0) break;
      if (round > 50) throw new StasisError(`pid ${this.root}: the tree keeps changing; could not freeze it`);
      for (const p of fresh) this.moveIn(p.pid);
      this.writeState('FROZEN');
    }
    const t0 = process.hrtime.bigint();
    const tree = scanTree(this.root);
    log(`frozen; seizing ${tree.length} processes`);
    for (const p of tree) this.seizeProcess(p, false);
    this.writeState('THAWED');
    for (const p of this.processes) p.threads.forEach((t, i) => this.noteStop(p, i, t.waitStop('the freeze')));
    for (const t of this.tracees) t.afterStop();
    this.leaveAbandonedCode(log);
    this.holdSignals();
    this.freezeMs = Number(process.hrtime.bigint() - t0) / 1e6;
    this.goHome();
    log(`froze ${tree.length} processes, ${this.tracees.length} threads`);
  }

  /**
   * Without a freezer (as CRIU does when given none): seize and interrupt
   * every thread, then scan again, since a task that ran until its stop
   * may have forked or made a thread; done when a scan of the stopped tree
   * finds nothing new.
   */
  private freezeWithPtrace(log: (m: string) => void, why: string): void {
    const t0 = process.hrtime.bigint();
    for (let round = 0; ; round++) {
      if (round > 50) throw new StasisError(`pid ${this.root}: the tree keeps changing; could not freeze it`);
      const tree = scanTree(this.root);
      const known = new Map(this.processes.map((p) => [p.pid, p]));
      let fresh = 0;
      for (const p of tree) {
        const fp = known.get(p.pid);
        if (!fp) {
          this.seizeProcess(p, true);
          fresh++;
        } else if (!fp.zombie) {
          fresh += this.seizeThreads(fp, true);
        }
      }
      if (!fresh) {
        // Everything is stopped now: a zombie seen earlier, reaped by its
        // parent before that stopped, is no longer part of the tree.
        const now = new Set(tree.map((p) => p.pid));
        this.processes.splice(0, this.processes.length, ...this.processes.filter((p) => now.has(p.pid)));
        break;
      }
    }
    this.leaveAbandonedCode(log);
    this.holdSignals();
    this.freezeMs = Number(process.hrtime.bigint() - t0) / 1e6;
    log(`froze ${this.processes.length} processes, ${this.tracees.length} threads with ptrace (${why})`);
  }

  /**
   * Tasks found in the code a checkpoint killed before left them in (its
   * batch's wait lasts 2 s) are taken home before anything reads their
   * registers: every thread of a process first, then its stray scratch
   * area unmapped.
   */
  private leaveAbandonedCode(log: (m: string) => void): void {
    for (const p of this.processes) {
      const main = p.threads[0];
      if (!main?.injectsSafely || !p.vdso) continue;
      const left = LeftBehind.read(p.vdso, main.gadgetTask().memFd());
      if (!left) continue;
      for (const t of p.threads) {
        if (t.leaveAbandoned(left)) log(`pid ${t.pid} was still in the code of an abandoned checkpoint; taken home`);
      }
      main.sweepStrayScratch();
    }
  }

  private seizeProcess(p: TreeEntry, wait: boolean): void {
    const fp: FrozenProcess = { pid: p.pid, ppid: p.ppid, zombie: p.zombie, stopped: p.stopped, threads: [] };
    this.processes.push(fp);
    if (p.zombie) return;
    this.seizeThreads(fp, wait);
    if (!fp.threads.length && p.pid !== this.root) {
      this.processes.pop(); // it exited since the scan: the next scan sees it as a zombie, or not at all
      return;
    }
    if (fp.threads.length && fp.threads[0].pid !== p.pid) {
      throw new UnsupportedError(`pid ${p.pid}: its main thread has exited; not supported yet`);
    }
  }

  /** Seize the threads of `fp` not seized yet, main thread first; how many were new. */
  private seizeThreads(fp: FrozenProcess, wait: boolean): number {
    const have = new Set(fp.threads.map((t) => t.pid));
    let tids: number[];
    try {
      tids = listThreads(fp.pid).filter((tid) => !have.has(tid));
    } catch {
      return 0; // the process is gone; the task errors come later
    }
    tids.sort((a, b) => (a === fp.pid ? -1 : b === fp.pid ? 1 : a - b));
    let added = 0;
    // Once per process: maps of 1,000 threads' stacks, read 1,000 times, add up.
    if (fp.vdso === undefined) {
      try {
        fp.vdso = vdsoOf(fp.pid);
      } catch { /* gone or unreadable: the safe path reports it */ }
    }
    for (const tid of tids) {
      const t = new Tracee(tid, fp.pid);
      try {
        t.seizeOnly({ vdso: fp.vdso });
      } catch (e) {
        // Exited meanwhile (an exiting task answers EPERM, a reaped one ESRCH).
        if (e instanceof SyscallError && (e.code === 'ESRCH' || e.code === 'EPERM') && tid !== this.root && exited(fp.pid, tid)) continue;
        if (e instanceof SyscallError && e.code === 'EPERM') throw notOurs(fp.pid);
        throw e;
      }
      fp.threads.push(t);
      added++;
      if (wait) {
        this.noteStop(fp, fp.threads.length - 1, t.waitStop('the freeze'));
        t.afterStop();
      }
    }
    return added;
  }

  /**
   * A task in a group stop reports the stop signal as its first ptrace stop
   * (PTRACE_EVENT_STOP); an interrupted running task reports SIGTRAP (it was
   * continued between the scan and the seize: not stopped any more).
   */
  private noteStop(p: FrozenProcess, index: number, sig: number): void {
    if (index !== 0 || !p.stopped) return;
    if (sig === 5) p.stopped = false;
    else p.stopSignal = sig;
  }

  /**
   * Every signal but SIGTRAP blocked while the tree is dumped: a system call
   * injected into a task returns to user mode, where a pending unblocked
   * signal would be dequeued (and its siginfo lost). Each task gets its own
   * mask back at release; the dump reads it from heldMask.
   */
  private holdSignals(): void {
    // A target injected safely blocks every signal itself, and only once its
    // way home (which restores its own mask) exists: holding them here would
    // leave them blocked if stasis died before that.
    for (const t of this.tracees) {
      if (t.injectsSafely) continue;
      t.heldMask = t.getSigmask();
      t.setSigmask(~(1n << 4n) & 0xffffffffffffffffn);
    }
  }

  private goHome(): void {
    if (!this.cgroup) return;
    for (const [pid, home] of this.home) {
      try {
        fs.writeFileSync(path.join(FREEZER, home, 'cgroup.procs'), String(pid));
      } catch { /* it exited */ }
    }
    this.home.clear();
    try {
      fs.rmdirSync(this.cgroup);
    } catch { /* busy only if a task could not be moved back; left for inspection */ }
    this.cgroup = null;
    this.watchdog?.done();
    this.watchdog = undefined;
  }

  /**
   * Let the tree go: detached with their registers as found (or killed when
   * `kill`), thawed and back in their own cgroups. Killed, the memory of
   * `largest` (a pid) is freed from here as it dies: true if it was.
   */
  release(kill: boolean, largest?: number): boolean {
    let released = false;
    if (kill) {
      // A dying process frees its memory on its own CPU, tens of ms a GiB,
      // and is reported dead only then: this thread takes a share of it.
      // One process only, killed last, right after the others, which all
      // die at once as before (stasis killed in between, the kernel would
      // let the ones still alive run; that one with its new CPU mask).
      const last = this.processes.find((p) => p.pid === largest);
      for (const p of this.processes) {
        if (p !== last) try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
      }
      if (last) released = killFreeing(last.pid, readyToRelease(last));
      // As their tracer we hear of each death first: take that notice so
      // the real parent can reap them at once.
      // A group leader is reported only after its other threads: those first.
      const order = [...this.tracees.filter((t) => t.pid !== t.tgid), ...this.tracees.filter((t) => t.pid === t.tgid)];
      const ours = new Set(this.processes.filter((p) => p.ppid === process.pid).map((p) => p.pid));
      for (const t of order) {
        // Our own children are left for our caller to reap, as it expects;
        // their other threads are ours to collect as tracer, or the leader
        // could never be reaped.
        if (!ours.has(t.tgid) || t.pid !== t.tgid) {
          try { waitpidSync(t.pid, __WALL); } catch { /* not ours to wait for */ }
        }
        t.forget();
      }
    } else {
      for (const p of this.processes) {
        // A stopped process is detached with its stop signal: whatever became
        // of its group stop while traced, it goes back to being stopped.
        // Injected safely, a task keeps its group stop (the stop signal sent
        // again would stay pending on it); the old way, it needs the signal.
        const sig = p.stopSignal ?? 19;
        if (p.stopped && p.threads.length && !p.threads[0].injectsSafely && !p.threads[0].deferredSignals.includes(sig)) p.threads[0].deferredSignals.unshift(sig);
        for (const t of p.threads) {
          try {
            if (t.heldMask !== undefined) t.setSigmask(t.heldMask);
            t.detach();
          } catch { /* gone */ }
        }
      }
      // Detached, a stopped task runs for an instant before it stops again:
      // back in its stop before we return, or a checkpoint right after
      // would take it for running.
      for (const p of this.processes) {
        if (p.stopped) {
          try { waitStoppedAgain(p.threads.map((t) => t.pid), `pid ${p.pid}`); } catch { /* gone, or continued meanwhile */ }
        }
      }
    }
    if (this.cgroup) {
      try { this.writeState('THAWED'); } catch { /* removed */ }
      this.goHome();
    }
    return released;
  }
}

/**
 * Before killFreeing: the process's pidfd, and its threads kept off this
 * CPU (woken here, the dying process would take the CPU from us and be done
 * before the release, half the time). Undefined if it has no pidfd.
 */
function readyToRelease(p: FrozenProcess): number | undefined {
  let pidfd: number;
  try {
    pidfd = syscall(SYS.pidfd_open, 'pidfd_open', p.pid, 0);
  } catch {
    return undefined;
  }
  const cpu = Buffer.alloc(4);
  try {
    syscall(SYS.getcpu, 'getcpu', cpu, 0, 0);
  } catch {
    return pidfd;
  }
  const others = Buffer.alloc(AFFINITY_BYTES, 0xff);
  others[cpu.readUInt32LE(0) >> 3] &= ~(1 << (cpu.readUInt32LE(0) & 7));
  for (const t of p.threads) {
    try { syscall(SYS.sched_setaffinity, 'sched_setaffinity', t.pid, AFFINITY_BYTES, others); } catch { /* one CPU, or a cpuset of ours alone */ }
  }
  return pidfd;
}

/**
 * SIGKILL, and at once process_mrelease (killReleasing) through `pidfd`
 * (closed here). Only ever a help: what the release cannot do (memory
 * shared with a process that lives on, an older kernel, the process done
 * first) the exit does as usual. True if it was done.
 */
function killFreeing(pid: number, pidfd: number | undefined): boolean {
  if (pidfd === undefined) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    return false;
  }
  try {
    if (killReleasing(pid, pidfd) === 0) return true;
    // Killed or not (kill's failure looks the same): killing again is harmless.
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    return false;
  } finally {
    fs.closeSync(pidfd);
  }
}

/** Wait (5 s at most) until every task is in a group stop again (state T), after a detach. */
export function waitStoppedAgain(tids: number[], what: string): void {
  const until = Date.now() + 5000;
  for (const tid of tids) {
    for (let state = readStat(tid).state; state !== 'T'; state = readStat(tid).state) {
      if (Date.now() > until) throw new StasisError(`${what}: task ${tid} did not stop again (state ${state})`);
      sleepSync(1);
    }
  }
}
