// Restart: read and verify the whole image, then turn a blank process into
// the saved one with system calls injected into it, and let it run. A
// failure kills the half-made process: nothing is left behind.
import fs from 'node:fs';
import { readMaps, readStat, readStatus, Status } from './proc';
import { Tracee } from './ptrace/tracee';
import { Remote, PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, AT_FDCWD } from './ptrace/remote';
import { Queries } from './ptrace/queries';
import { spawnBlank, BLANK_SYSCALL } from './ptrace/blank';
import { nsInitCode } from './ptrace/nsinit';
import { loadImage, LoadedImage } from './image/load';
import { ImageProcess, ImageVma, PageRun } from './image/schema';
import { MemfdKeeper } from './kinds/memfd';
import { GhostKeeper, checkGhosts } from './kinds/ghost';
import { mapVmas, fillPages, writePages, finishVmas, findGap, checkFileIdentity, checkMappedFiles, PageIndex, lockVmas, keptFromParent, unsharedDrops, opensSharedObject } from './kinds/memory';
import { restoreMergeAny, restoreLockFuture } from './kinds/mmpolicy';
import { moveVdso, specialVmas } from './kinds/vdso';
import { restoreCpu, restoreXcompPerm } from './kinds/registers';
import { restoreSigactions, restoreSignalState, altstackCalls, blockAllSignals, restoreBlocked, consumeStopNotice, enterGroupStop, releaseStopped } from './kinds/signals';
import { restoreTimers } from './kinds/timers';
import { PipeKeeper } from './kinds/pipes';
import { MqueueKeeper } from './kinds/mqueue';
import { SysvShmKeeper } from './kinds/sysvshm';
import { PidfdKeeper } from './kinds/pidfd';
import { UnixKeeper, socketOwners } from './kinds/unix';
import { InetKeeper } from './kinds/inet';
import { restoreFds, checkFds } from './kinds/files';
import { RestoreContext } from './kinds/fdkind';
import { restoreLocks } from './kinds/locks';
import { restoreFdOwners } from './kinds/fdowner';
import { sharingFlags } from './kinds/sharing';
import { imageTaskIds, refuseProcFilesUnderNewPids, refusePidfdsUnderNewPids, refuseDeadPidfdsInNewPidNs } from './kinds/procfs';
import { restoreMm } from './kinds/mm';
import { restoreProcessAttrs, threadAttrCalls, checkCreds, checkFilePrivilege } from './kinds/process';
import { restoreCredsAndCaps, credsNow } from './kinds/caps';
import { restoreSched, timerSlackCalls } from './kinds/sched';
import { restoreMempolicy, dumpMempolicy } from './kinds/mempolicy';
import { restoreProcessPrctl, restoreThreadPrctl, restoreThreadPrctlAfterCreds, dumpThreadPrctl, dumpProcessPrctl, type ProcessPrctlState } from './kinds/prctl';
import { checkCgroups, restoreCgroups, unifiedHome, CgroupsHere } from './kinds/cgroups';
import { RestartHold } from './ptrace/hold';
import { TtyKeeper, acquireTerminal, restoreForeground } from './kinds/tty';
import { StasisError, UnsupportedError, errnoName } from './sys/errno';
import { SYS, Regs, PAGE_SIZE } from './sys/x86';
import { waitpidSync, waitpidAsync, sleepSync, __WALL, WIFEXITED, WEXITSTATUS, WTERMSIG } from './sys/libc';

export { loadImage };
export type { LoadedImage };

export interface RestartOptions {
  /**
   * Restore inside a new pid namespace, where the saved pids are always
   * free. A tiny init (pid 1) is made for it; it ends with the root's
   * exit status, which is what wait() reports.
   */
  pidNs?: boolean;
  /**
   * Restore inside a new user namespace too (implies pidNs), mapping only
   * the restarter's own uid and gid, in which the restarter may choose pids
   * (clone3 set_tid) and set the executable. Default: when the restarter
   * lacks CAP_CHECKPOINT_RESTORE (an ordinary user).
   */
  userNs?: boolean;
  /** external pipes ("pipe:[INO]") and unix sockets ("unix:[INO]") of the image -> an fd of this process to connect them to */
  inheritFds?: Record<string, number>;
  /** Start the restored process in a new session (for running detached). */
  setsid?: boolean;
  /**
   * Before the tree runs, read it back with the checkpoint's own code and
   * compare it with the image; any difference fails the restart, naming
   * the field. Off by default: it costs a dump of every process's metadata.
   */
  verify?: boolean;
  /** --shell-job: an image of a job of a terminal outside its tree gets the terminal on our stdin */
  shellJob?: boolean;
  log?: (msg: string) => void;
}

export interface ExitInfo {
  /** exit code, or null when killed by a signal */
  code: number | null;
  signal: number | null;
}

export interface Restarted {
  pid: number;
  /** The pid the image saved, when a lone process was restored under another (that one was in use). */
  movedFrom?: number;
  /** Resolves when the restored process ends (it is our child). */
  wait(): Promise<ExitInfo>;
}

function pidInUse(pid: number): string | null {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/**
 * Who holds `pid`, if anyone. A zombie about to be reaped (the killed
 * original, reparented to an init that reaps about once a second) is
 * waited for, a few seconds at most.
 */
function pidHolder(pid: number): string | null {
  const until = Date.now() + 5000;
  for (;;) {
    let state: string;
    try {
      state = readStat(pid).state;
    } catch {
      return null;
    }
    if (state !== 'Z' || Date.now() > until) return pidInUse(pid);
    sleepSync(10);
  }
}

/** Everything that can be checked before a process is created; `me`: this process's status (its credentials and capabilities). */
function preflight(img: LoadedImage, ns: boolean, userNs: boolean, me: Status, cgroups: CgroupsHere): void {
  const taskIds = imageTaskIds(img.processes, img.zombies);
  // A program and its libraries are mapped many times over in a tree: each
  // path's privilege is looked at once (a check that fails throws).
  const unprivileged = new Set<string>(), mapped = new Set<string>(), exes = new Set<string>();
  const privilege = (path: string, where: string) => {
    if (unprivileged.has(path)) return;
    checkFilePrivilege(path, where);
    unprivileged.add(path);
  };
  for (const p of img.processes) {
    checkCreds(p.creds, `pid ${p.pid}`, p.threads.map((t) => ({ tid: t.tid, caps: t.caps })), me);
    const exe = JSON.stringify(p.mm.exe);
    if (!exes.has(exe)) checkFileIdentity(p.mm.exe, `pid ${p.pid}: executable`);
    exes.add(exe);
    privilege(p.mm.exe.path, `pid ${p.pid}: executable`);
    for (const v of p.vmas) {
      const where = `pid ${p.pid}: mapping at 0x${v.start.toString(16)}`;
      if (v.kind === 'file') privilege(v.file!.path, where);
      if (userNs && opensSharedObject(v, p.vmas)) {
        throw new UnsupportedError(`${where}: shared anonymous memory is rebuilt through /proc/PID/map_files, which needs CAP_CHECKPOINT_RESTORE outside a user namespace: restart this image as root`);
      }
    }
    checkMappedFiles(p.vmas, p.creds, p.pid, mapped);
    checkFds(p.fds, p.creds, p.pid, taskIds);
    checkCgroups(p.pid, p.cgroups, cgroups);
  }
  checkGhosts(img);
  if (ns || singleTask(img)) return; // pids are free in a new namespace; one task may take a new pid
  for (const id of [...img.processes.flatMap((p) => p.threads.map((t) => t.tid)), ...img.zombies.map((z) => z.pid)]) {
    const user = pidHolder(id);
    if (user !== null) throw new StasisError(`pid ${id} is in use (by ${user}): end that process first, or restart with --pid-ns`);
  }
}

/**
 * One single-threaded process: restored at its pid when that is free, else
 * under a new one (the snapshot-and-clone case, with the original still
 * running). A tree or threads need every pid, or nothing.
 */
function singleTask(img: LoadedImage): boolean {
  return img.processes.length === 1 && !img.zombies.length && img.processes[0].threads.length === 1;
}

// Injection page, 16 pages of scratch, 2 pages of generated batch code.
const SCRATCH_PAGES = 16, BATCH_PAGES = 2;
const GADGET_SIZE = (1 + SCRATCH_PAGES + BATCH_PAGES) * PAGE_SIZE;

// Injection page layout: `syscall; int3` at 0 for ordinary calls; at 16 a
// clone3 whose child falls into a pause() loop while the parent traps.
const CLONE_GADGET = 16;
const GADGET_CODE = Buffer.from([
  0x0f, 0x05, 0xcc, ...new Array(13).fill(0x90),
  0x0f, 0x05, // syscall (clone3)
  0x48, 0x85, 0xc0, // test rax, rax
  0x75, 0x09, // jnz parent
  0xb8, 0x22, 0x00, 0x00, 0x00, // child: mov eax, 34 (pause)
  0x0f, 0x05, // syscall
  0xeb, 0xf7, // jmp child
  0xcc, // parent: int3
]);
const CLONE_VM = 0x100, CLONE_PTRACE = 0x2000, CLONE_FS = 0x200, CLONE_FILES = 0x400, CLONE_SIGHAND = 0x800;
const CLONE_PARENT = 0x8000, CLONE_THREAD = 0x10000, CLONE_SYSVSEM = 0x40000, CLONE_NEWPID = 0x20000000;
const SIGCHLD = 17, SIGSTOP = 19;
const PR_SET_NAME = 15;

/** Map the injection page and scratch area into a freshly seized blank task. */
function mapGadget(t: Tracee, img: LoadedImage): Remote {
  const remote = new Remote(t);
  t.syscallInsn = BLANK_SYSCALL;
  const everyVma = img.processes.flatMap((p) => p.vmas);
  const gadget = findGap(GADGET_SIZE, [...everyVma, ...readMaps(t.pid)]);
  remote.call('mmap', SYS.mmap, [gadget, GADGET_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0], 'injection page');
  t.writeMem(gadget, GADGET_CODE);
  t.syscallInsn = gadget;
  remote.scratch = gadget + PAGE_SIZE;
  remote.scratchSize = SCRATCH_PAGES * PAGE_SIZE;
  remote.batchArea = remote.scratch + remote.scratchSize;
  remote.batchSize = BATCH_PAGES * PAGE_SIZE;
  return remote;
}

/**
 * clone3 injected into `parent` with set_tid: a new process or thread at
 * exactly `tid`, parked in the pause() loop of the injection page, traced
 * by us from its creation (CLONE_PTRACE: our options, EXITKILL included,
 * are inherited), so that no moment exists where our death would leave
 * it running.
 */
function cloneAt(parent: Remote, tid: number, flags: number, exitSignal: number, tgid: number, log: (m: string) => void, nsView = false): Tracee {
  const gadget = parent.task.syscallInsn;
  parent.reset();
  const tids = Buffer.alloc(4);
  tids.writeInt32LE(tid);
  const tidsAddr = parent.putBytes(tids);
  const args = Buffer.alloc(88); // struct clone_args, up to set_tid_size
  args.writeBigUInt64LE(BigInt(flags | CLONE_PTRACE), 0);
  args.writeBigUInt64LE(BigInt(exitSignal), 32);
  args.writeBigUInt64LE(BigInt(tidsAddr), 64);
  args.writeBigUInt64LE(1n, 72);
  const argsAddr = parent.putBytes(args);
  parent.task.syscallInsn = gadget + CLONE_GADGET;
  let r: bigint;
  try {
    r = parent.task.injectRaw(SYS.clone3, [argsAddr, 88]);
  } finally {
    parent.task.syscallInsn = gadget;
  }
  if (r < 0n) {
    const why = -r === 17n ? 'it is in use' : `errno ${-r}`;
    throw new StasisError(`cannot create pid ${tid} (${why}); end the process holding it, or restart in a new pid namespace`);
  }
  log(flags & CLONE_THREAD ? `pid ${tgid}: thread ${tid} created` : `pid ${tid} created`);
  let child: Tracee;
  if (!nsView) {
    child = new Tracee(Number(r), tgid === 0 ? Number(r) : tgid);
  } else {
    // The parent sees the namespace's pid; ptrace and /proc want ours.
    const host = hostIdOf(parent.task, Number(r), (flags & CLONE_THREAD) !== 0);
    child = new Tracee(host, tgid === 0 ? host : parent.task.tgid);
    child.vpid = Number(r);
    child.vtgid = tgid === 0 ? Number(r) : parent.task.vtgid;
  }
  child.adoptCloned();
  child.syscallInsn = gadget;
  return child;
}

/** The id in our pid namespace of a task its parent knows as `vid`. */
function hostIdOf(parent: Tracee, vid: number, thread: boolean): number {
  const candidates = thread
    ? fs.readdirSync(`/proc/${parent.tgid}/task`).map(Number)
    : fs.readdirSync(`/proc/${parent.tgid}/task`).flatMap((t) =>
      fs.readFileSync(`/proc/${parent.tgid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
  // Newest last in both lists: the one just created is found first (a tree
  // of 100 under one parent read ~5,000 status files scanning oldest first).
  for (const c of candidates.reverse()) {
    const ns = readStatus(c).nsPid;
    if (ns[ns.length - 1] === vid) return c;
  }
  throw new StasisError(`cannot find the task created as pid ${vid} in the new pid namespace`);
}

/**
 * Empty the address space of a blank task (but for the ranges in `keep`,
 * as forked from its parent) and put the vDSO where the image wants it.
 */
function clearAddressSpace(remote: Remote, p: ImageProcess, log: (m: string) => void, keep: Array<{ start: number; end: number }> = []): void {
  const t = remote.task;
  const gadget = t.syscallInsn;
  const live = readMaps(t.pid);
  const specials = specialVmas(live);
  const ranges = live.filter((v) => !specials.has(v.path) && v.start !== gadget).flatMap((v) => {
    // What is left of a mapping once the kept ranges are cut out of it.
    let pieces = [{ start: v.start, end: v.end, path: v.path }];
    for (const k of keep) {
      pieces = pieces.flatMap((x) => (k.end <= x.start || k.start >= x.end ? [x]
        : [{ ...x, end: k.start }, { ...x, start: k.end }].filter((y) => y.end > y.start)));
    }
    return pieces;
  });
  // One batch. An fd table shared with the parent holds the parent's restored fds already.
  remote.batch([
    ...(p.sharing?.files ? [] : [{ name: 'close_range', nr: SYS.close_range, args: [0, 0xffffffff, 0], where: 'inherited fds' }]),
    ...ranges.map((v) => ({ name: 'munmap', nr: SYS.munmap, args: [v.start, v.end - v.start], where: `blank mapping ${v.path}` })),
  ]);
  const taken = [...p.vmas, { start: gadget, end: gadget + GADGET_SIZE }, ...specials.values()];
  moveVdso(remote, p.vmas, live, findGap(64 * PAGE_SIZE, taken));
  log(`pid ${p.pid}: address space cleared, vDSO in place`);
}

/** A live process of the image, being rebuilt. */
interface Rebuilding {
  image: ImageProcess;
  /** main thread first */
  threads: Tracee[];
  remote: Remote;
  /** its address space is already rebuilt (before its children were forked) */
  memoryBuilt?: boolean;
  /** the parent it was forked from once the parent's memory was rebuilt */
  forkedFrom?: ImageProcess;
}

/** What stasis holds for the tasks to open while they are rebuilt. */
interface Keepers extends RestoreContext { memfds: MemfdKeeper; ttys: TtyKeeper; inet: InetKeeper; ghosts: GhostKeeper; hold: RestartHold | null; cgroups: CgroupsHere }

/**
 * What stasis makes and holds for the tasks while the tree is rebuilt
 * (pipes, memfds, queues, segments ...), closed together in reverse order;
 * after a failed restart each undoes what it created outside stasis.
 */
class Held {
  private readonly made: Array<{ close(failed: boolean): void }> = [];

  add<T extends { close(failed: boolean): void }>(make: () => T): T {
    try {
      const k = make();
      this.made.push(k);
      return k;
    } catch (e) {
      this.close(true);
      throw e;
    }
  }

  close(failed: boolean): void {
    for (const k of this.made.splice(0).reverse()) {
      try { k.close(failed); } catch { /* closing the others matters more */ }
    }
  }
}

/** Everything of one process, its threads created and set up, in its main thread. */
function rebuildProcess(r: Rebuilding, img: LoadedImage, keep: Keepers, log: (m: string) => void, ns: boolean, host: (pid: number) => number): void {
  const p = r.image;
  const remote = r.remote;
  if (!r.memoryBuilt) rebuildMemory(r, img, keep, log, host);
  // Signals that reached the blank while the tree was built (SIGCHLD from
  // zombies made on purpose) are artifacts of the restore, not its state.
  remote.task.deferredSignals.length = 0;
  restoreMm(remote, p.mm);
  if (!p.sharing?.files) restoreFds(remote, p.fds, keep);
  restoreLocks(remote, p.fds);
  // cwd, root and umask shared with the parent are set already (a second chroot would nest).
  restoreProcessAttrs(remote, p.sharing?.fs ? { ...p, root: '/' } : p);
  lockVmas(remote, p.vmas);
  restoreLockFuture(remote, p.lockFuture);
  restoreSigactions(remote, p.sigactions);
  restoreXcompPerm(remote, BigInt(p.xcompPerm));
  // Threads: created at their tids inside this process, then given their state.
  const cloneFlags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
  for (const th of p.threads.slice(1)) r.threads.push(cloneAt(remote, th.tid, cloneFlags, 0, p.pid, log, ns));
  blockAllSignals(r.threads);
  // The process's prctl state is asked with the main thread's questions, before any credentials.
  let processPrctl: ProcessPrctlState | undefined, credsChanged = false;
  p.threads.forEach((th, i) => {
    const tr = remote.withTask(r.threads[i]);
    // One run: what is only set, and the questions for what is set where it differs.
    const q = new Queries(tr);
    const setOk = q.setting([
      ...threadAttrCalls(th),
      ...(i > 0 ? [{ name: 'prctl', nr: SYS.prctl, args: [PR_SET_NAME, tr.putString(th.comm)], where: 'thread name' }] : []),
      ...altstackCalls(tr, th.signals),
      ...timerSlackCalls(tr, th.sched),
    ]);
    const policyNow = dumpMempolicy(q), prctlNow = dumpThreadPrctl(q), creds = credsNow(q);
    const processNow = i === 0 ? dumpProcessPrctl(q) : undefined;
    q.run();
    setOk();
    processPrctl ??= processNow?.();
    restoreMempolicy(tr, th.mempolicy, policyNow());
    const prctl = prctlNow();
    restoreThreadPrctl(tr, th.prctl, prctl);
    const changed = restoreCredsAndCaps(tr, p.creds, th.caps, creds());
    credsChanged ||= changed;
    restoreThreadPrctlAfterCreds(tr, th.prctl, prctl, changed);
    restoreSignalState(tr, th.signals, i === 0 ? p.sharedPending : []);
  });
  restoreProcessPrctl(remote, p.prctl, processPrctl!, credsChanged);
  restoreFdOwners(remote, p.fds);
}

/**
 * The last steps of a process, children before parents: timers armed, the
 * injection page gone, signal masks and registers back; a stopped process
 * stops again with its own signal before its parent is finished.
 */
function finishProcess(r: Rebuilding, img: LoadedImage, log: (m: string) => void, host: (pid: number) => number): void {
  const p = r.image;
  const remote = r.remote;
  restoreTimers(remote, p.timers, p.pid);
  for (const c of img.processes.filter((x) => x.ppid === p.pid && x.stopped)) consumeStopNotice(remote, c.pid, p.stopsReported.includes(c.pid), p.sharedPending);
  // The last injected call removes the injection page itself; the single
  // step traps before the next instruction is fetched from it.
  remote.call('munmap', SYS.munmap, [remote.task.syscallInsn, GADGET_SIZE], 'injection page');
  p.threads.forEach((th, i) => restoreSched(r.threads[i], th.sched));
  // A signal pending and not blocked interrupts a call the thread was in, as it would have.
  const signo = (b: string) => Buffer.from(b, 'base64').readInt32LE(0);
  const deliverable = (th: typeof p.threads[number]) => [...th.signals.pending, ...p.sharedPending].some((b) => !(BigInt(th.signals.blocked) & (1n << BigInt(signo(b) - 1))));
  p.threads.forEach((th, i) => restoreCpu(r.threads[i], new Regs(Buffer.from(th.regs, 'base64')), Buffer.from(th.xstate, 'base64'), deliverable(th)));
  if (p.stopped) enterGroupStop(r.threads, p.stopSignal ?? SIGSTOP, `pid ${host(p.pid)}`);
  restoreBlocked(r.threads, p.threads.map((th) => th.signals));
  if (p.stopped) releaseStopped(r.threads, `pid ${host(p.pid)}`);
  log(`pid ${p.pid}: ${p.threads.length} thread(s) ready`);
}

/**
 * The address space: VMAs, pages, protections. A process forked from its
 * rebuilt parent keeps the VMAs it still shared with it as they are.
 */
function rebuildMemory(r: Rebuilding, img: LoadedImage, keep: Keepers, log: (m: string) => void, host: (pid: number) => number): void {
  const p = r.image;
  const remote = r.remote;
  const kept = r.forkedFrom ? keptFromParent(p.vmas, r.forkedFrom.vmas, r.forkedFrom.pid) : new Map<ImageVma, Set<number>>();
  restoreCgroups(remote.task.pid, p.pid, p.cgroups, keep.cgroups, !!keep.hold);
  clearAddressSpace(remote, p, log, [...kept.keys()]);
  restoreMergeAny(remote, p.ksmMergeAny);
  const fresh = p.vmas.filter((v) => !kept.has(v));
  mapVmas(remote, fresh, host, keep.memfds, p.ksmMergeAny, keep.ghosts);
  const pages = img.pages.filter((pg) => pg.pid === p.pid);
  const copied = fillPages(remote, p.vmas, pages, fresh, img.fileMapped);
  writeInheritedPages(remote, p, img, kept);
  finishVmas(remote, p.vmas, unsharedDrops(kept, pages.flatMap((pg) => pg.runs)));
  const shared = [...kept.values()].reduce((n, x) => n + x.size, 0);
  log(`pid ${p.pid}: ${p.vmas.length} VMAs mapped, ${pages.reduce((s, pg) => s + pg.data.length, 0)} bytes of pages written${copied ? ` (${copied} by UFFDIO_COPY)` : ''}${shared ? `, ${shared} pages still shared with pid ${r.forkedFrom!.pid}` : ''}`);
  r.memoryBuilt = true;
}

/** Pages this process still shared copy-on-write with an ancestor: copied from the ancestor's (unless kept as forked). */
function writeInheritedPages(remote: Remote, p: ImageProcess, img: LoadedImage, kept: Map<ImageVma, Set<number>>): void {
  const indexes = new Map<number, PageIndex>();
  for (const v of p.vmas) {
    const shared = kept.get(v);
    for (const whole of v.inherited ?? []) {
      const group = !shared ? whole : { from: whole.from, runs: whole.runs.flatMap((run) => {
        const out: PageRun[] = [];
        for (let a = run.addr; a < run.addr + run.len; a += PAGE_SIZE) {
          if (shared.has(a)) continue;
          const last = out[out.length - 1];
          if (last && last.addr + last.len === a) last.len += PAGE_SIZE;
          else out.push({ addr: a, len: PAGE_SIZE });
        }
        return out;
      }) };
      if (!group.runs.length) continue;
      let index = indexes.get(group.from);
      if (!index) indexes.set(group.from, index = new PageIndex(img.pages.filter((pg) => pg.pid === group.from)));
      const total = group.runs.reduce((n, r) => n + r.len, 0);
      const data = Buffer.allocUnsafe(total);
      let at = 0;
      for (const run of group.runs) {
        index.copy(run.addr, run.len, data, at, `pid ${p.pid}`);
        at += run.len;
      }
      writePages(remote, [v], group.runs, data);
    }
  }
}

/** Sessions and groups: leaders first, so members have a group to join. */
function setSession(remote: Remote, e: { pid: number; pgid: number; sid: number }): void {
  if (readStat(remote.task.pid).session === remote.task.pid) return; // already leads a session
  if (e.sid === e.pid) remote.call('setsid', SYS.setsid, [], `pid ${e.pid}: session`);
  else if (e.pgid === e.pid) remote.call('setpgid', SYS.setpgid, [0, 0], `pid ${e.pid}: process group`);
}

/** Let a zombie-to-be end the way the saved one ended. */
function becomeZombie(t: Tracee, exitStatus: number): void {
  const sig = exitStatus & 0x7f;
  if (sig) {
    t.deferredSignals.push(sig); // delivered at detach, with default disposition
    t.detach(false);
    return;
  }
  const r = t.saved!.clone();
  r.set('rip', t.syscallInsn);
  r.set('rax', SYS.exit_group);
  r.set('rdi', (exitStatus >> 8) & 0xff);
  r.set('orig_rax', -1n);
  t.setRegs(r);
  t.detach(false);
}

function waitZombie(pid: number): void {
  const until = Date.now() + 5000;
  for (;;) {
    let state = 'gone';
    try { state = readStat(pid).state; } catch { /* reaped */ }
    if (state === 'Z') return;
    if (Date.now() > until) throw new StasisError(`pid ${pid} did not become a zombie (state ${state})`);
    sleepSync(1);
  }
}

/** Kill and reap (as parent or tracer) tasks that will not become anything. */
function discard(tasks: Tracee[]): void {
  for (const t of tasks) {
    try { process.kill(t.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  // Latest first: a group leader is reported only after its other threads,
  // and a pid namespace's init only after every task in it is reaped (we
  // trace them, so we reap them first, or its exit waits forever).
  for (const t of [...tasks].reverse()) {
    try { waitpidSync(t.pid, __WALL); } catch { /* reaped */ }
    t.forget();
  }
}

export function restartSync(input: string | number | LoadedImage, opts: RestartOptions = {}): Restarted {
  const log = opts.log ?? (() => {});
  const img = typeof input === 'object' ? input : loadImage(input);
  try {
    return rebuildTree(img, opts, log);
  } finally {
    if (typeof input !== 'object') img.release();
  }
}

function rebuildTree(img: LoadedImage, opts: RestartOptions, log: (m: string) => void): Restarted {
  const startedAt = process.hrtime.bigint();
  const root = img.processes[0];
  const me = readStatus('self');
  const userNs = opts.userNs ?? !mayCheckpointRestore(me);
  const ns = !!opts.pidNs || userNs;
  log(`image of pid ${root.pid} (${root.comm}): ${img.processes.length} processes, ${img.zombies.length} zombies verified`);
  const cgroups = new CgroupsHere();
  preflight(img, ns, userNs, me, cgroups);
  // Tasks of a user namespace could not take a pty master from us (pidfd_getfd).
  if (userNs && img.objects.ttys?.length) throw new UnsupportedError('terminals of an image are restored by root only (a pty master is handed over with pidfd_getfd, which tasks in a new user namespace may not do to stasis): restart as root');
  const slaveUsed = new Set(img.processes.flatMap((p) => [...p.fds.filter((f) => f.kind === 'tty' && f.side !== 'master').map((f) => (f as { tty: number }).tty), ...(p.ctty !== undefined ? [p.ctty] : [])]));
  const held = new Held();
  const keep: Keepers = {
    pipes: held.add(() => new PipeKeeper(img.pipes, opts.inheritFds)),
    memfds: held.add(() => new MemfdKeeper(img.memfds)),
    mqueues: held.add(() => new MqueueKeeper(img.objects.mqueues ?? [], img.processes)),
    deadPidfd: held.add(() => new PidfdKeeper(img.processes)),
    unix: held.add(() => new UnixKeeper(img.objects.unix ?? [], socketOwners(img.processes), opts.inheritFds)),
    ttys: held.add(() => new TtyKeeper(img.objects.ttys ?? [], { shellJob: opts.shellJob, slaveUsed })),
    inet: new InetKeeper(),
    ghosts: held.add(() => new GhostKeeper(img.objects.ghosts ?? [], log)),
    hold: null,
    cgroups,
  };
  const segments = held.add(() => new SysvShmKeeper(img.objects.sysvShm ?? []));
  let restored = false;
  // Outside a new pid namespace, the tree is held in a cgroup of its own
  // until it is whole (see ptrace/hold.ts). One task alone needs none: one
  // PTRACE_DETACH lets it go whole, and until then it dies with us
  // (PTRACE_O_EXITKILL). The hold's cgroup moves wait for RCU grace periods.
  const oneTask = singleTask(img);
  let blank: Tracee;
  try {
    keep.hold = ns || oneTask ? null : RestartHold.create();
    blank = new Tracee(spawnBlank({ setsid: opts.setsid }));
  } catch (e) {
    keep.hold?.abandon();
    held.close(true);
    throw e;
  }
  if (keep.hold && !keep.hold.enter(blank.pid)) {
    keep.hold.abandon();
    keep.hold = null;
  }
  const hold = keep.hold;
  if (hold) log(`the tree is held in cgroup ${hold.dir} until it is whole`);
  else if (!ns && !oneTask) log('no cgroup v2 hierarchy to hold the tree in: a restart killed while it lets the tree go may leave part of it');
  const created: Tracee[] = [blank];
  let rootTask: Tracee;
  let movedFrom: number | undefined;
  /** the task whose end is the tree's end: the root, or the namespace's init */
  let waitFor: Tracee;
  try {
    blank.seize({ exitKill: true });
    const blankRemote = mapGadget(blank, img);
    const relay = userNs ? enterUserNs(blankRemote, [keep.pipes, keep.memfds, keep.mqueues!, keep.deadPidfd!, keep.ghosts], log) : null;
    // The tree, top down: every task is a copy of the blank until rebuilt.
    let nsInit: Tracee | null = null;
    if (ns) {
      refuseProcFilesUnderNewPids(img.processes, 'inside a new pid namespace');
      refuseDeadPidfdsInNewPidNs(img.processes);
      blankRemote.call('unshare', SYS.unshare, [CLONE_NEWPID], 'new pid namespace');
      nsInit = cloneAt(blankRemote, 1, CLONE_PARENT, 0, 0, log);
      nsInit.vpid = nsInit.vtgid = 1;
      created.push(nsInit);
      relay?.(nsInit.pid);
      discard([blank]);
      rootTask = cloneAt(blankRemote.withTask(nsInit), root.pid, 0, SIGCHLD, 0, log, true);
      created.push(rootTask);
    } else if (singleTask(img) && pidInUse(root.pid) !== null) {
      refuseProcFilesUnderNewPids(img.processes, `under a new pid (pid ${root.pid} is in use)`);
      refusePidfdsUnderNewPids(img.processes, `under a new pid (pid ${root.pid} is in use)`);
      log(`pid ${root.pid} is in use: restoring under a new pid`);
      rootTask = blank;
      movedFrom = root.pid;
    } else {
      rootTask = cloneAt(blankRemote, root.pid, CLONE_PARENT, 0, 0, log);
      created.push(rootTask);
      discard([blank]);
    }
    const remotes = new Map<number, Remote>([[root.pid, blankRemote.withTask(rootTask)]]);
    const host = (pid: number) => remotes.get(pid)?.task.pid ?? pid;
    const entries = [...img.processes, ...img.zombies];
    const images = new Map(img.processes.map((p) => [p.pid, p]));
    const rebuilding = new Map<number, Rebuilding>();
    const rebuildingOf = (pid: number): Rebuilding => {
      let r = rebuilding.get(pid);
      if (!r) rebuilding.set(pid, r = { image: images.get(pid)!, threads: [remotes.get(pid)!.task], remote: remotes.get(pid)! });
      return r;
    };
    // A parent's memory is rebuilt before its first child is forked from
    // it, so pages they shared copy-on-write are shared again. Not when it
    // maps shared memory a process not yet rebuilt makes, or merges all its
    // memory with KSM (a forked child would inherit that).
    const readyToFork = (pid: number): boolean => {
      const r = rebuildingOf(pid);
      const p = r.image;
      if (!r.memoryBuilt && !p.ksmMergeAny
        && p.vmas.every((v) => !v.shmem?.from || v.shmem.from.pid === p.pid || rebuilding.get(v.shmem.from.pid)?.memoryBuilt)) {
        rebuildMemory(r, img, keep, log, host);
      }
      return !!r.memoryBuilt;
    };
    setSession(remotes.get(root.pid)!, root);
    acquireTerminal(remotes.get(root.pid)!, root, keep.ttys);
    for (let progress = true; progress; ) {
      progress = false;
      for (const e of entries) {
        const parent = remotes.get(e.ppid);
        if (remotes.has(e.pid) || !parent) continue;
        const fork = images.has(e.pid) && images.has(e.ppid) && readyToFork(e.ppid);
        const t = cloneAt(parent, e.pid, 'sharing' in e ? sharingFlags(e.sharing) : 0, e.exitSignal ?? SIGCHLD, 0, log, ns);
        created.push(t);
        const r = blankRemote.withTask(t);
        remotes.set(e.pid, r);
        if (fork) rebuildingOf(e.pid).forkedFrom = images.get(e.ppid);
        setSession(r, e);
        if ('ctty' in e) acquireTerminal(r, e, keep.ttys);
        progress = true;
      }
    }
    for (const e of entries) {
      if (e.sid === e.pid || e.pgid === e.pid) continue;
      if (readStat(host(e.pid)).pgrp !== host(e.pgid)) remotes.get(e.pid)!.call('setpgid', SYS.setpgid, [0, e.pgid], `pid ${e.pid}: join group ${e.pgid}`);
    }
    restoreForeground(img.objects.ttys ?? [], img.processes, (pid) => remotes.get(pid)!, keep.ttys, ns ? (pid) => pid : host);
    for (const z of img.zombies) becomeZombie(remotes.get(z.pid)!.task, z.exitStatus);
    for (const z of img.zombies) waitZombie(host(z.pid));
    // The exit signals of zombies made on purpose are artifacts of the
    // restore: taken now (a parent whose memory was rebuilt before the
    // zombies existed would otherwise take them in a later injected call,
    // and have them re-sent as if by stasis).
    for (const ppid of new Set(img.zombies.map((z) => z.ppid))) {
      const parent = remotes.get(ppid);
      if (!parent || !images.has(ppid)) continue;
      parent.call('getpid', SYS.getpid, [], `pid ${ppid}: taking its zombies' exit signals`);
      parent.task.deferredSignals.length = 0;
    }
    log(`tree of ${entries.length} processes created`);
    const live: Rebuilding[] = img.processes.map((p) => rebuildingOf(p.pid));
    for (const r of live) {
      rebuildProcess(r, img, keep, log, ns, host);
      created.push(...r.threads.slice(1));
    }
    // Every socket of the tree exists: connections may leave repair mode.
    keep.inet.finish();
    for (const r of [...live].reverse()) finishProcess(r, img, log, host);
    keep.memfds.seal();
    segments.finish();
    keep.ttys.finish();
    keep.ghosts.setTimes();
    // Every fd is open: the namespace may now have its own /proc, in which
    // the tree finds itself under the pids it knows.
    if (userNs && nsInit) mountOwnProc(blankRemote.withTask(nsInit), log);
    // Processes restored stopped are back in their group stop, untraced: not read back.
    const running = live.filter((r) => !r.image.stopped);
    if (opts.verify && !running.length) log('verify: every process was restored stopped; nothing read back');
    else if (opts.verify) log('verify: reading the restored tree back');
    // Required here: a restart without --verify loads none of the checkpoint's code.
    if (opts.verify && running.length) (require('./verify') as typeof import('./verify')).verifyTree({ processes: running, zombies: img.zombies.map((z) => ({ image: z, pid: host(z.pid) })), pipes: img.pipes, memfds: img.memfds, objects: img.objects, startedAt, log });
    // Let go: detached tasks stay frozen in the hold (or die with the
    // namespace's init, still ours) until one step makes the restart whole.
    log('letting the tree go');
    hold?.freeze();
    for (const r of live) for (const t of r.threads) t.detach(false);
    if (nsInit) {
      startNsInit(blankRemote.withTask(nsInit), root.pid);
      waitFor = nsInit;
    } else {
      waitFor = rootTask;
    }
    hold?.commit(new Map(live.map((r) => [r.remote.task.pid, unifiedHome(r.image.cgroups)])));
    restored = true;
  } catch (e) {
    discard(created);
    hold?.abandon();
    if (e instanceof StasisError) throw new StasisError(`restart failed, nothing left running: ${e.message}`);
    throw e;
  } finally {
    held.close(!restored);
  }
  const pid = rootTask.pid;
  log(`restored as pid ${pid}${ns ? ` (pid ${root.pid} in a new pid namespace)` : ''}`);
  let waited: Promise<ExitInfo> | undefined;
  return {
    pid,
    movedFrom,
    wait: () => {
      waited ??= waitpidAsync(waitFor.pid, 0).then(({ status }) =>
        WIFEXITED(status) ? { code: WEXITSTATUS(status), signal: null } : { code: null, signal: WTERMSIG(status) });
      return waited;
    },
  };
}

const CLONE_NEWUSER = 0x10000000, CLONE_NEWNS = 0x20000;
const CAP_CHECKPOINT_RESTORE = 40n;
const O_RDWR = 2;

/** clone3 set_tid and PR_SET_MM's exe need CAP_CHECKPOINT_RESTORE (root here has it). */
function mayCheckpointRestore(me: Status): boolean {
  return (me.capEff & (1n << CAP_CHECKPOINT_RESTORE)) !== 0n;
}

interface FdKeeper { heldFds(): number[]; fdPath: (fd: number) => string }

/**
 * Move the blank into a new user namespace where only our own uid and gid
 * are mapped (to themselves: the program sees the ids it had), so that it
 * and its descendants hold every capability there, over the pid namespace
 * made next. Tasks in it may not open our /proc/PID/fd (a task of another
 * user namespace is not theirs to trace), so the blank first opens every
 * pipe and memfd we hold: the namespace's init inherits those and the
 * tasks open them through its /proc/PID/fd. Returns what to call with the
 * init's pid once it exists.
 */
function enterUserNs(blank: Remote, keepers: FdKeeper[], log: (m: string) => void): (initPid: number) => void {
  blank.reset();
  const copies = keepers.map((k) => new Map(k.heldFds().map((fd) => [fd, blank.call('openat', SYS.openat,
    [AT_FDCWD, blank.putString(`/proc/${process.pid}/fd/${fd}`), O_RDWR, 0], `our fd ${fd} for the user namespace`)])));
  blank.call('unshare', SYS.unshare, [CLONE_NEWUSER], 'new user namespace');
  blank.call('unshare', SYS.unshare, [CLONE_NEWNS], 'new mount namespace (for its own /proc)');
  const uid = process.geteuid!(), gid = process.getegid!();
  try {
    // An unprivileged writer may map only its own ids, and gids only once setgroups is denied.
    fs.writeFileSync(`/proc/${blank.pid}/uid_map`, `${uid} ${uid} 1\n`);
    fs.writeFileSync(`/proc/${blank.pid}/setgroups`, 'deny');
    fs.writeFileSync(`/proc/${blank.pid}/gid_map`, `${gid} ${gid} 1\n`);
  } catch (e) {
    throw new StasisError(`mapping uid ${uid} and gid ${gid} into the new user namespace: ${(e as NodeJS.ErrnoException).code}`);
  }
  log(`new user namespace: uid ${uid} and gid ${gid} mapped to themselves`);
  return (initPid) => keepers.forEach((k, i) => { k.fdPath = (fd) => `/proc/${initPid}/fd/${copies[i].get(fd)}`; });
}

const MS_NOSUID = 2, MS_NODEV = 4, MS_NOEXEC = 8;

/**
 * A /proc of the new pid namespace over the host's, in the tree's own mount
 * namespace (the host's /proc is untouched): /proc/self and /proc/PID then
 * agree with getpid(). Mounted by the init, which lives in that pid
 * namespace. Where the kernel refuses (a /proc partly hidden by mounts
 * over it), the tree keeps the host's /proc, as with --pid-ns as root.
 */
function mountOwnProc(init: Remote, log: (m: string) => void): void {
  init.reset();
  const proc = init.putString('proc');
  const r = init.task.injectRaw(SYS.mount, [proc, init.putString('/proc'), proc, MS_NOSUID | MS_NODEV | MS_NOEXEC, 0]);
  log(r < 0n ? `the namespace keeps the host's /proc (mount: ${errnoName(Number(-r))})` : 'the namespace has its own /proc');
}

/** Turn the namespace's blank pid 1 into its init: reap, and end with the root. */
function startNsInit(init: Remote, rootVpid: number): void {
  init.call('close_range', SYS.close_range, [0, 0xffffffff, 0], 'init fds');
  const code = init.task.syscallInsn + 64;
  init.task.writeMem(code, nsInitCode(rootVpid, init.scratch));
  const r = init.task.saved!.clone();
  r.set('rip', code);
  r.set('orig_rax', -1n);
  init.task.setRegs(r);
  init.task.detach(false);
}

/** Library entry point: restart from a file path, an open fd, or a loaded image. */
export async function restart(input: string | number | LoadedImage, opts: RestartOptions = {}): Promise<Restarted> {
  return restartSync(input, opts);
}
