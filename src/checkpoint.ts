// Checkpoint of a process tree: freeze it at one instant, save everything
// every process and thread is into one image stream, then let the tree go
// on (or end it with --kill once the image is safe). Any failure detaches
// every task exactly as it was.
import fs from 'node:fs';
import { readStat, readVmas, withPagemap } from './proc';
import { Tracee } from './ptrace/tracee';
import { Queries } from './ptrace/queries';
import { Remote } from './ptrace/remote';
import { BackgroundRead, PagemapRead } from './sys/background-read';
import { FrozenTree, FrozenProcess } from './ptrace/freeze';
import { refuseBusy } from './ptrace/busy';
import { FreezeDeadline } from './ptrace/watchdog';
import { ImageWriter, RecordType, PageRun } from './image/stream';
import { ImageProcess, ImageThread, ImageVma, ImageFd, ImageZombie } from './image/schema';
import { classifyVmas, pagesToSave, readPagemapsAhead, dumpPages, dumpPagesSync, linkSharedMemory, SavedFrames, ShmemPages, PageBuffers } from './kinds/memory';
import { dumpLockFuture, lockedKb, dumpMergeAny, refuseMempolicy } from './kinds/mmpolicy';
import { specialVmas } from './kinds/vdso';
import { dumpCpu, dumpXcompPerm } from './kinds/registers';
import { dumpSigactions, dumpSharedPending, dumpThreadSignals, checkStopSignal, stopReported, continuedUnreported, dumpExitSignal } from './kinds/signals';
import { dumpTimers, refuseLinkedTimerSignals } from './kinds/timers';
import { OpenFiles, dumpFds } from './kinds/files';
import { DumpContext } from './kinds/fdkind';
import { LockTable } from './kinds/locks';
import { dumpSharing, fdTableSharers, Sharing } from './kinds/sharing';
import { dumpFdOwners, refuseForeignOwners } from './kinds/fdowner';
import { refuseForeignProcFiles } from './kinds/procfs';
import { PipeTable } from './kinds/pipes';
import { SysvShmTable } from './kinds/sysvshm';
import { MemfdTable, refuseMemfdExe } from './kinds/memfd';
import { GhostTable } from './kinds/ghost';
import { dumpMm } from './kinds/mm';
import { dumpProcessAttrs, dumpThreadAttrs } from './kinds/process';
import { dumpCaps } from './kinds/caps';
import { dumpSched } from './kinds/sched';
import { dumpMempolicy } from './kinds/mempolicy';
import { dumpProcessPrctl, dumpThreadPrctl, refuseUnrestorableAttrs } from './kinds/prctl';
import { refuseForeignNamespaces } from './kinds/namespaces';
import { dumpCgroups } from './kinds/cgroups';
import { TtyTable } from './kinds/tty';
import { writeHint } from './image/stream';
import { StasisError, UnsupportedError } from './sys/errno';
import { PAGE_SIZE } from './sys/x86';

export interface CheckpointOptions {
  /** End the tree once the image is completely written and flushed. */
  kill?: boolean;
  /** Step-by-step progress messages. */
  log?: (msg: string) => void;
  /** pipes shared with processes outside the tree to take anyway, as "pipe:[INO]" */
  external?: string[];
  /**
   * The longest the tree may stay frozen, in ms (0 or absent: no limit).
   * Past it THIS PROCESS ENDS (exit status 1, the reason on stderr, a
   * partial image file removed): the tree is let go safely by the kernel,
   * wherever we were blocked (a write to a stalled pipe). For the CLI.
   */
  freezeTimeoutMs?: number;
  /** --shell-job: a job of the user's terminal; its terminal (outside the tree) is the restarter's at restart */
  shellJob?: boolean;
  /** Take established TCP connections along, in TCP repair mode (else they are refused by name). */
  tcpEstablished?: boolean;
  /** The most bytes of data one deleted file may carry into the image (default DEFAULT_GHOST_LIMIT, 64 MiB). */
  ghostLimit?: number;
}

/** Default of --freeze-timeout: a reader that stopped reading, not a big image, should hit it. */
export const DEFAULT_FREEZE_TIMEOUT_MS = 60_000;

export interface CheckpointResult {
  pid: number;
  /** processes in the image (zombies included) and threads */
  processes: number;
  threads: number;
  /** bytes of the whole image */
  imageBytes: number;
  /** bytes of page contents in it */
  pageBytes: number;
  vmas: number;
  fds: number;
  /** how long the tree was stopped, in milliseconds */
  frozenMs: number;
  /** first task stopped to last task stopped, in milliseconds */
  freezeMs: number;
}

function checkTarget(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new StasisError(`invalid pid ${pid}`);
  if (pid === process.pid) throw new StasisError('stasis cannot checkpoint itself this way');
  let state: string;
  try {
    state = readStat(pid).state;
  } catch {
    throw new StasisError(`pid ${pid}: no such process`);
  }
  if (state === 'Z') throw new StasisError(`pid ${pid} is a zombie: nothing left to checkpoint`);
}

/**
 * A `syscall` instruction to inject through: where the task stopped, or in
 * its vDSO, or (a program that unmapped its vDSO) in any code it maps.
 */
export function locateSyscall(t: Tracee, code: Array<{ start: number; end: number }>): number {
  const rip = Number(t.saved!.get('rip'));
  try {
    const b = t.readMem(rip - 2, 2);
    if (b[0] === 0x0f && b[1] === 0x05) return rip - 2;
  } catch { /* rip-2 not readable: fall through to the vDSO */ }
  for (const r of code) {
    const bytes = t.readMem(r.start, r.end - r.start);
    for (let i = 0; i + 1 < bytes.length; i++) if (bytes[i] === 0x0f && bytes[i + 1] === 0x05) return r.start + i;
  }
  throw new StasisError(`pid ${t.pid}: found no syscall instruction to run system calls in the task`);
}

function openOutput(output: string | number): { fd: number; close: (ok: boolean) => void } {
  if (typeof output === 'number') return { fd: output, close: () => {} };
  const fd = fs.openSync(output, 'w', 0o600);
  let open = true;
  return {
    fd,
    close: (ok) => {
      if (!open) return;
      open = false;
      // The image is only whole once on the device: a write-back error
      // (EIO) surfaces here, and the partial image goes like any other.
      let failed: NodeJS.ErrnoException | undefined;
      try {
        if (ok) fs.fsyncSync(fd);
      } catch (e) {
        failed = e as NodeJS.ErrnoException;
      }
      try {
        fs.closeSync(fd);
      } catch (e) {
        failed ??= e as NodeJS.ErrnoException;
      }
      if (!ok || failed) fs.rmSync(output, { force: true });
      if (ok && failed) throw new StasisError(`writing the image to ${output}: ${failed.code ?? failed.message}${writeHint(failed.code)}; the partial image is removed`);
    },
  };
}

/** What can be read from /proc and refused before any injection. */
export interface Survey {
  proc: FrozenProcess;
  vmas: ImageVma[];
  fds: ImageFd[];
  sharing: Sharing;
  /** its controlling terminal, as recorded (src/kinds/tty.ts) */
  ctty?: number;
}

/**
 * The /proc side of live, seized processes (parents first): VMAs and fds,
 * shared memory linked across them. Nothing is injected yet. Also how
 * restart --verify reads a rebuilt tree back.
 */
export function surveyProcesses(procs: FrozenProcess[], root: number, ctx: DumpContext, locks: LockTable, readBack = false): Survey[] {
  const sharing = dumpSharing(procs, root);
  const surveys: Survey[] = [];
  const files = new OpenFiles();
  for (const p of procs) {
    // A tree read back by restart --verify may live in namespaces of its own (--pid-ns, a user's restart).
    refuseUnrestorableAttrs(p.pid, p.threads);
    if (!readBack) refuseForeignNamespaces(p.pid);
    refuseMemfdExe(p.pid);
    const vmas = classifyVmas(readVmas(p.pid), p.pid, ctx.memfds, ctx.table(SysvShmTable), ctx.table(GhostTable));
    const fds = dumpFds(p.pid, ctx, files, locks, fdTableSharers(sharing, p.pid));
    const st = readStat(p.pid);
    const ctty = ctx.table(TtyTable).noteCtty(p.pid, st.ttyNr, st.session, new Set(procs.map((x) => x.pid)));
    surveys.push({ proc: p, vmas, fds, sharing: sharing.byPid.get(p.pid)!, ...(ctty !== undefined ? { ctty } : {}) });
  }
  linkSharedMemory(surveys.map((s) => ({ pid: s.proc.pid, vmas: s.vmas })));
  return surveys;
}

/**
 * A surveyed process's live children in the tree: those stopped (whether it
 * took their stop report is part of its state), and how many run (one of
 * them may hold a continued report it has not taken).
 */
export function childrenOf(surveys: Survey[], s: Survey): { stopped: number[]; running: number } {
  const live = surveys.filter((c) => c.proc.ppid === s.proc.pid && !c.proc.zombie);
  return { stopped: live.filter((c) => c.proc.stopped).map((c) => c.proc.pid), running: live.filter((c) => !c.proc.stopped).length };
}

export function dumpZombie(p: FrozenProcess): ImageZombie {
  const st = readStat(p.pid);
  return { pid: p.pid, ppid: st.ppid, pgid: st.pgrp, sid: st.session, exitStatus: st.exitCode, exitSignal: dumpExitSignal(p.pid) };
}

/**
 * Sessions and process groups are recreated from their leaders inside the
 * tree. The root may belong to the caller's session and group (they are
 * the restarter's at restart); any other process must be in a session and
 * a group whose leader is in the tree, or in the root's.
 */
function refuseForeignGroups(root: number, procs: Array<{ pid: number; stat: { pgrp: number; session: number } }>): void {
  const inTree = new Set(procs.map((p) => p.pid));
  const rootStat = procs.find((p) => p.pid === root)!.stat;
  for (const p of procs) {
    if (p.pid === root) continue;
    if (!inTree.has(p.stat.session) && p.stat.session !== rootStat.session) {
      throw new UnsupportedError(`pid ${p.pid}: its session ${p.stat.session} is led by a process outside the tree; not supported`);
    }
    if (!inTree.has(p.stat.pgrp) && p.stat.pgrp !== rootStat.pgrp) {
      throw new UnsupportedError(`pid ${p.pid}: its process group ${p.stat.pgrp} is led by a process outside the tree; not supported`);
    }
  }
}

/**
 * Injected system calls: the process-wide state through its main thread,
 * then each thread. Every thread must be seized and stopped, its `saved`
 * registers the ones it resumes with; they are what the image records.
 */
export function dumpProcess(s: Survey, children: ReturnType<typeof childrenOf> = { stopped: [], running: 0 }): ImageProcess {
  const pid = s.proc.pid;
  const stat = readStat(pid);
  const main = s.proc.threads[0];
  const attrs = dumpProcessAttrs(pid, main.statusSeen);
  const cgroups = dumpCgroups(pid);
  const vdso = specialVmas(s.vmas).get('[vdso]');
  const insn = locateSyscall(main, vdso ? [vdso] : s.vmas.filter((v) => v.prot === 'r-x' && v.kind === 'file'));
  for (const t of s.proc.threads) t.syscallInsn = insn;
  const remote = new Remote(main);
  const lockedBefore = lockedKb(pid);
  // Room for every thread's answers too (~230 bytes each), so that one run asks them all.
  remote.mapScratch(4 * PAGE_SIZE + Math.ceil(s.proc.threads.length * 256 / PAGE_SIZE) * PAGE_SIZE, 0, 4 * PAGE_SIZE);
  try {
    const lockFuture = dumpLockFuture(remote, lockedBefore);
    // Every kind's questions to the process and its threads in one run (Queries).
    const q = new Queries(remote);
    const mempolicies = refuseMempolicy(q, s.vmas);
    const sigactions = dumpSigactions(q);
    const xcompPerm = dumpXcompPerm(q);
    const mm = dumpMm(q);
    const prctl = dumpProcessPrctl(q);
    const timers = dumpTimers(q, pid, s.proc.threads.map((t) => t.pid));
    const stops = children.stopped.map((c) => [c, stopReported(q, c)] as const);
    const continued = children.running ? continuedUnreported(q) : () => 0;
    const fds = dumpFdOwners(q, s.fds);
    const threadsLater = s.proc.threads.map((t) => dumpThread(t === main ? q : q.of(t), pid));
    q.run();
    mempolicies();
    if (continued()) {
      throw new UnsupportedError(`pid ${pid}: its child ${continued()} was continued (SIGCONT) after a stop, and it has not taken that report (a wait with WCONTINUED): a restart cannot make it again; not supported: checkpoint once the parent has waited for it`);
    }
    const threads: ImageThread[] = threadsLater.map((thread) => thread());
    const sharedPending = dumpSharedPending(remote);
    const timerState = timers();
    refuseLinkedTimerSignals(timerState, [...sharedPending, ...threads.flatMap((t) => t.signals.pending)].map((b) => Buffer.from(b, 'base64')), `pid ${pid}`);
    return {
      pid, ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, ...attrs, sigactions: sigactions(), sharedPending,
      xcompPerm: '0x' + xcompPerm().toString(16), mm: mm(), prctl: prctl(), lockFuture, ksmMergeAny: dumpMergeAny(pid), vmas: s.vmas, fds: fds(), sharing: s.sharing, threads, cgroups,
      ...(s.proc.stopped ? { stopped: true, stopSignal: checkStopSignal(s.proc.stopSignal ?? 19, pid) } : {}),
      stopsReported: stops.filter(([, reported]) => reported()).map(([c]) => c), exitSignal: dumpExitSignal(pid), timers: timerState, ...(s.ctty !== undefined ? { ctty: s.ctty } : {}),
    };
  } finally {
    remote.unmapScratch();
  }
}

/** One thread's state, its questions planned on `q` (asked of that thread). */
function dumpThread(q: Queries, pid: number): () => ImageThread {
  const t = q.remote.task;
  const signals = dumpThreadSignals(q), attrs = dumpThreadAttrs(q), sched = dumpSched(q), mempolicy = dumpMempolicy(q), prctl = dumpThreadPrctl(q), caps = dumpCaps(q);
  return () => {
    const cpu = dumpCpu(t);
    return {
      tid: t.pid,
      comm: fs.readFileSync(`/proc/${pid}/task/${t.pid}/comm`, 'utf8').replace(/\n$/, ''),
      regs: cpu.regs.buf.toString('base64'),
      xstate: cpu.xstate.toString('base64'),
      signals: signals(),
      ...attrs(),
      sched: sched(),
      mempolicy: mempolicy(),
      prctl: prctl(),
      caps: caps(),
      inSyscall: cpu.inSyscall,
    };
  };
}

/** A checkpoint between its metadata and its pages. */
interface Session {
  pid: number;
  tree: FrozenTree;
  frozenAt: bigint;
  out: ReturnType<typeof openOutput>;
  writer: ImageWriter;
  surveys: Survey[];
  runs: PageRun[][][];
  log: (m: string) => void;
  deadline?: FreezeDeadline;
  kinds: DumpContext;
}

/**
 * Freeze the tree, refuse what cannot be saved (before a byte is written),
 * save every process's state and write the metadata records.
 */
function begin(pid: number, output: string | number, opts: CheckpointOptions): Session {
  const log = opts.log ?? (() => {});
  checkTarget(pid);
  refuseBusy(pid);
  const tree = new FrozenTree(pid);
  const limit = opts.freezeTimeoutMs ?? 0;
  const deadline = limit > 0 ? new FreezeDeadline(limit, `stasis: pid ${pid}: the tree stayed frozen ${limit / 1000} s while the image was written (is its reader stalled?); checkpoint abandoned, the tree resumed: raise --freeze-timeout if the image is that slow to write`, typeof output === 'string' ? output : undefined) : undefined;
  log('freezing');
  try {
    tree.freeze(log);
  } catch (e) {
    deadline?.done();
    throw e;
  }
  const frozenAt = process.hrtime.bigint();
  // Read while the tree is surveyed (the read waits for an RCU grace period).
  const procLocks = new BackgroundRead('/proc/locks');
  let kinds: DumpContext | undefined;
  let ahead = new Map<ImageVma, PagemapRead>();
  try {
    const pipes = new PipeTable();
    const memfds = new MemfdTable();
    const locks = new LockTable();
    if (tree.processes.find((p) => p.pid === pid)?.zombie) throw new StasisError(`pid ${pid} is a zombie: nothing left to checkpoint`);
    const zombies = tree.processes.filter((p) => p.zombie).map(dumpZombie);
    kinds = new DumpContext(pipes, memfds);
    kinds.table(TtyTable).shellJob = !!opts.shellJob;
    kinds.tcpEstablished = !!opts.tcpEstablished;
    kinds.table(GhostTable).limit = opts.ghostLimit ?? kinds.table(GhostTable).limit;
    const surveys = surveyProcesses(tree.processes.filter((p) => !p.zombie), pid, kinds, locks);
    refuseForeignGroups(pid, [...surveys.map((x) => ({ pid: x.proc.pid, stat: readStat(x.proc.pid) })), ...zombies.map((z) => ({ pid: z.pid, stat: { pgrp: z.pgid, session: z.sid } }))]);
    refuseForeignProcFiles(surveys.map((x) => ({ pid: x.proc.pid, fds: x.fds })), new Set([...tree.processes.map((p) => p.pid), ...tree.tracees.map((t) => t.pid)]));
    pipes.refuseOutsiders(new Set(tree.processes.map((p) => p.pid)), opts.external);
    kinds.refuseOutsiders(new Set(tree.processes.map((p) => p.pid)), opts.external ?? []);
    ahead = readPagemapsAhead(surveys.map((s) => ({ pid: s.proc.pid, vmas: s.vmas })));
    const images = surveys.map((s) => { log(`injecting into pid ${s.proc.pid}`); return dumpProcess(s, childrenOf(surveys, s)); });
    refuseForeignOwners(images);
    // Only a tree can share pages copy-on-write between its processes.
    const frames = surveys.length > 1 ? new SavedFrames() : undefined;
    const parentOf = new Map(tree.processes.map((p) => [p.pid, p.ppid]));
    const ancestorsOf = (child: number) => {
      const set = new Set<number>();
      for (let p = parentOf.get(child); p !== undefined && parentOf.has(p); p = parentOf.get(p)) set.add(p);
      return set;
    };
    const shmem = new ShmemPages();
    const runs = surveys.map((s) => {
      const ancestors = ancestorsOf(s.proc.pid);
      return withPagemap(s.proc.pid, (pagemapFd) => s.vmas.map((v) => pagesToSave(s.proc.pid, v, { frames, ancestors, shmem, ahead: ahead.get(v), pagemapFd })));
    });
    const pipeData = pipes.collect();
    const memfdData = memfds.collect();
    log(`${images.length} processes, ${zombies.length} zombies, ${pipeData.length} pipes, ${memfdData.length} memfds`);
    // Last of the refusals: the read of /proc/locks has had the longest to finish.
    locks.refuseUnattributed(new Set(tree.processes.map((p) => p.pid)), procLocks.text());
    const out = openOutput(output);
    try {
      const writer = new ImageWriter(out.fd, typeof output === 'string' ? output : undefined);
      for (const img of images) writer.json(RecordType.Process, img);
      for (const z of zombies) writer.json(RecordType.Zombie, z);
      if (pipeData.length) writer.json(RecordType.Pipes, pipeData);
      if (memfdData.length) writer.json(RecordType.Memfds, memfdData);
      const objects = kinds.objects();
      if (objects) writer.json(RecordType.Objects, objects);
      return { pid, tree, frozenAt, out, writer, surveys, runs, log, deadline, kinds };
    } catch (e) {
      out.close(false);
      throw e;
    }
  } catch (e) {
    kinds?.release(false);
    try { tree.release(false); } catch { /* gone */ }
    deadline?.done();
    procLocks.settle(); // its 1 MiB is freed once its thread is done with it
    for (const read of ahead.values()) read.settle();
    throw e;
  }
}

/** The process with the most pages of its own, if 8 MiB or more: worth freeing from here as it is killed. */
function largestProcess(s: Session): number | undefined {
  const bytes = s.runs.map((runs) => runs.reduce((n, rs) => rs.reduce((m, r) => m + r.len, n), 0));
  const i = bytes.indexOf(Math.max(...bytes));
  return bytes[i] >= 8 << 20 ? s.surveys[i].proc.pid : undefined;
}

/** Close the stream safely, then let the tree go (or end it). */
function finish(s: Session, pageBytes: number, opts: CheckpointOptions): CheckpointResult {
  s.writer.end({ pageBytes });
  s.out.close(true);
  // The image is whole: the deadline must not remove it, least of all during --kill.
  s.deadline?.done();
  s.log(`image written: ${s.writer.bytes} bytes, ${pageBytes} of pages`);
  const frozenMs = Number(process.hrtime.bigint() - s.frozenAt) / 1e6;
  s.log(opts.kill ? 'killing the tree' : 'detaching');
  // Killed, the tree goes first, then the repair-mode guards are let go:
  // stasis dying before the tree is dead must not leave a tree that runs on
  // with stalled connections (dying in the few calls after, the guards
  // close connections the image holds: their peers see a FIN).
  if (opts.kill) {
    const largest = largestProcess(s);
    const released = s.tree.release(true, largest);
    s.kinds.release(true);
    s.log(`tree killed${released ? ` (the memory of pid ${largest} released from here: process_mrelease)` : ''}`);
  } else {
    s.kinds.release(false);
    s.tree.release(false);
    s.log('tree resumed');
  }
  return {
    pid: s.pid, processes: s.tree.processes.length, threads: s.tree.tracees.length, imageBytes: s.writer.bytes, pageBytes,
    vmas: s.surveys.reduce((n, x) => n + x.vmas.length, 0), fds: s.surveys.reduce((n, x) => n + x.fds.length, 0),
    frozenMs, freezeMs: s.tree.freezeMs,
  };
}

function abort(s: Session): void {
  s.kinds.release(false);
  try { s.tree.release(false); } catch { /* gone */ }
  s.deadline?.done();
  s.out.close(false);
}

/** Checkpoint the tree rooted at `pid`, all on this thread. */
export function checkpointSync(pid: number, output: string | number, opts: CheckpointOptions = {}): CheckpointResult {
  const s = begin(pid, output, opts);
  try {
    let pageBytes = 0;
    const buffers = new PageBuffers();
    s.surveys.forEach((x, i) => { pageBytes += dumpPagesSync(new Remote(x.proc.threads[0]), x.vmas, s.runs[i], s.writer, buffers); });
    return finish(s, pageBytes, opts);
  } catch (e) {
    abort(s);
    throw e;
  }
}

/**
 * Library entry point: checkpoint the tree rooted at `pid` into a file path
 * or an open fd. Page checksums and writes overlap with reading the next
 * pages on worker threads; ptrace itself stays on this thread.
 */
export async function checkpoint(pid: number, output: string | number, opts: CheckpointOptions = {}): Promise<CheckpointResult> {
  const s = begin(pid, output, opts);
  try {
    let pageBytes = 0;
    s.log('dumping pages');
    const buffers = new PageBuffers();
    for (const [i, x] of s.surveys.entries()) pageBytes += await dumpPages(new Remote(x.proc.threads[0]), x.vmas, s.runs[i], s.writer, buffers);
    return finish(s, pageBytes, opts);
  } catch (e) {
    abort(s);
    throw e;
  }
}
