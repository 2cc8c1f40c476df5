// Restart: read and verify the whole image, then turn a blank process into
// the saved one with system calls injected into it, and let it run. A
// failure kills the half-made process: nothing is left behind.
import fs from 'node:fs';
import { readMaps } from './proc';
import { Tracee } from './ptrace/tracee';
import { Remote, PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE } from './ptrace/remote';
import { spawnBlank, BLANK_SYSCALL } from './ptrace/blank';
import { readImage, RecordType, decodePages, PageRun } from './image/stream';
import { ImageProcess } from './image/schema';
import { mapVmas, writePages, finishVmas, findGap, checkFileIdentity } from './kinds/memory';
import { moveVdso, specialVmas } from './kinds/vdso';
import { restoreCpu, restoreXcompPerm } from './kinds/registers';
import { restoreSigactions, restoreSignalState } from './kinds/signals';
import { restoreFds, checkFds } from './kinds/files';
import { restoreMm } from './kinds/mm';
import { restoreProcessAttrs, restoreThreadAttrs, restoreCreds, checkCreds } from './kinds/process';
import { ImageError, StasisError, UnsupportedError } from './sys/errno';
import { SYS, Regs, PAGE_SIZE } from './sys/x86';
import { waitpidSync, waitpidAsync, __WALL, WIFEXITED, WEXITSTATUS, WTERMSIG } from './sys/libc';

export interface RestartOptions {
  /** Start the restored process in a new session (for running detached). */
  setsid?: boolean;
  log?: (msg: string) => void;
}

export interface ExitInfo {
  /** exit code, or null when killed by a signal */
  code: number | null;
  signal: number | null;
}

export interface Restarted {
  pid: number;
  /** Resolves when the restored process ends (it is our child). */
  wait(): Promise<ExitInfo>;
}

export interface LoadedImage {
  process: ImageProcess;
  pages: Array<{ runs: PageRun[]; data: Buffer }>;
}

/** Read an image from a path or fd, verifying every record. */
export function loadImage(input: string | number): LoadedImage {
  const fd = typeof input === 'number' ? input : fs.openSync(input, 'r');
  const source = typeof input === 'number' ? (input === 0 ? 'the image on stdin' : `the image on fd ${input}`) : input;
  let records;
  try {
    records = readImage(fd, source);
  } finally {
    if (typeof input !== 'number') fs.closeSync(fd);
  }
  const procs = records.filter((r) => r.type === RecordType.Process);
  if (procs.length !== 1) throw new ImageError(`${source}: expected one Process record, found ${procs.length}`);
  let process: ImageProcess;
  try {
    process = JSON.parse(procs[0].payload.toString('utf8')) as ImageProcess;
  } catch (e) {
    throw new ImageError(`${source}: Process record is not valid JSON (${(e as Error).message})`);
  }
  const pages = records.filter((r) => r.type === RecordType.Pages).map((r) => decodePages(r.payload, `${source} at byte ${r.offset}`));
  return { process, pages };
}

/** Everything that can be checked before a process is created. */
function preflight(img: LoadedImage): void {
  const p = img.process;
  if (p.threads.length !== 1) throw new UnsupportedError(`the image has ${p.threads.length} threads: multi-threaded restore is not supported yet`);
  checkCreds(p.creds);
  checkFileIdentity(p.mm.exe, 'executable');
  for (const v of p.vmas) {
    if (v.kind === 'file') checkFileIdentity(v.file!, `mapping at 0x${v.start.toString(16)}`);
  }
  checkFds(p.fds);
  const saved = p.vmas.reduce((s, v) => s + v.savedPages, 0) * PAGE_SIZE;
  const carried = img.pages.reduce((s, r) => s + r.data.length, 0);
  if (saved !== carried) throw new ImageError(`the image lists ${saved} bytes of pages but carries ${carried}`);
}

const GADGET_SIZE = PAGE_SIZE + 16 * PAGE_SIZE;

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
const CLONE_PARENT = 0x8000;

/** Map the injection page and scratch area into a freshly seized blank task. */
function mapGadget(t: Tracee, img: LoadedImage): Remote {
  const remote = new Remote(t);
  t.syscallInsn = BLANK_SYSCALL;
  const gadget = findGap(GADGET_SIZE, [...img.process.vmas, ...readMaps(t.pid)]);
  remote.call('mmap', SYS.mmap, [gadget, GADGET_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0], 'injection page');
  t.writeMem(gadget, GADGET_CODE);
  t.syscallInsn = gadget;
  remote.scratch = gadget + PAGE_SIZE;
  remote.scratchSize = GADGET_SIZE - PAGE_SIZE;
  return remote;
}

/**
 * Make the task that becomes the restored process carry the original pid:
 * glibc caches its tid, so raise() and friends would aim at the old one.
 * clone3 with set_tid (and CLONE_PARENT, so it is our child) creates it;
 * when the pid is taken the blank task itself is used, under a new pid.
 */
function taskAtPid(blank: Remote, pid: number, log: (m: string) => void): Tracee | null {
  if (pid === blank.pid) return null;
  const gadget = blank.task.syscallInsn;
  blank.reset();
  const tids = Buffer.alloc(4);
  tids.writeInt32LE(pid);
  const tidsAddr = blank.putBytes(tids);
  const args = Buffer.alloc(88); // struct clone_args, up to set_tid_size
  args.writeBigUInt64LE(BigInt(CLONE_PARENT), 0);
  args.writeBigUInt64LE(BigInt(tidsAddr), 64);
  args.writeBigUInt64LE(1n, 72);
  const argsAddr = blank.putBytes(args);
  blank.task.syscallInsn = gadget + CLONE_GADGET;
  let r: bigint;
  try {
    r = blank.task.injectRaw(SYS.clone3, [argsAddr, 88]);
  } finally {
    blank.task.syscallInsn = gadget;
  }
  if (r < 0n) {
    log(`pid ${pid} is not available (errno ${-r}): restoring under a new pid`);
    return null;
  }
  const child = new Tracee(Number(r));
  child.seize({ exitKill: true });
  child.syscallInsn = gadget;
  return child;
}

/** Transform the blank task into the image's process. */
function rebuild(remote: Remote, img: LoadedImage, log: (m: string) => void): void {
  const p = img.process;
  const th = p.threads[0];
  const t = remote.task;
  const gadget = t.syscallInsn;
  const live = readMaps(t.pid);
  remote.call('close_range', SYS.close_range, [0, 0xffffffff, 0], 'inherited fds');
  const specials = specialVmas(live);
  for (const v of live) {
    if (specials.has(v.path) || v.start === gadget) continue;
    remote.call('munmap', SYS.munmap, [v.start, v.end - v.start], `blank mapping ${v.path}`);
  }
  const taken = [...p.vmas, { start: gadget, end: gadget + GADGET_SIZE }, ...specials.values()];
  moveVdso(remote, p.vmas, live, findGap(64 * PAGE_SIZE, taken));
  log('address space cleared, vDSO in place');
  mapVmas(remote, p.vmas);
  for (const pg of img.pages) writePages(remote, pg.runs, pg.data);
  finishVmas(remote, p.vmas);
  log(`${p.vmas.length} VMAs mapped, ${img.pages.reduce((s, r) => s + r.data.length, 0)} bytes of pages written`);
  restoreMm(remote, p.mm);
  restoreFds(remote, p.fds);
  restoreProcessAttrs(remote, p);
  restoreSigactions(remote, th.signals);
  restoreXcompPerm(remote, BigInt(p.xcompPerm));
  restoreThreadAttrs(remote, th);
  restoreCreds(remote, p.creds);
  restoreSignalState(remote, th.signals, t.pid);
  // The last injected call removes the injection page itself; the single
  // step traps before the next instruction is fetched from it.
  remote.call('munmap', SYS.munmap, [gadget, GADGET_SIZE], 'injection page');
  restoreCpu(t, new Regs(Buffer.from(th.regs, 'base64')), Buffer.from(th.xstate, 'base64'));
  log('registers set');
}

/** Kill and reap a task of ours that will not become anything. */
function discard(t: Tracee): void {
  try { process.kill(t.pid, 'SIGKILL'); } catch { /* already gone */ }
  try { waitpidSync(t.pid, __WALL); } catch { /* reaped */ }
  t.closeMem();
}

export function restartSync(input: string | number | LoadedImage, opts: RestartOptions = {}): Restarted {
  const log = opts.log ?? (() => {});
  const img = typeof input === 'object' ? input : loadImage(input);
  log(`image of pid ${img.process.pid} (${img.process.comm}) verified`);
  preflight(img);
  const blank = new Tracee(spawnBlank({ setsid: opts.setsid }));
  let target: Tracee | null = null;
  try {
    blank.seize({ exitKill: true });
    const blankRemote = mapGadget(blank, img);
    target = taskAtPid(blankRemote, img.process.pid, log);
    if (target) discard(blank);
    else target = blank;
    const remote = target === blank ? blankRemote : new Remote(target);
    // The clone shares the blank's layout: same injection page and scratch.
    remote.scratch = blankRemote.scratch;
    remote.scratchSize = blankRemote.scratchSize;
    rebuild(remote, img, log);
    target.detach(false);
  } catch (e) {
    discard(blank);
    if (target && target !== blank) discard(target);
    if (e instanceof StasisError) throw new StasisError(`restart failed, nothing left running: ${e.message}`);
    throw e;
  }
  const pid = target.pid;
  log(`restored as pid ${pid}`);
  let waited: Promise<ExitInfo> | undefined;
  return {
    pid,
    wait: () => {
      waited ??= waitpidAsync(pid, 0).then(({ status }) =>
        WIFEXITED(status) ? { code: WEXITSTATUS(status), signal: null } : { code: null, signal: WTERMSIG(status) });
      return waited;
    },
  };
}

/** Library entry point: restart from a file path, an open fd, or a loaded image. */
export async function restart(input: string | number | LoadedImage, opts: RestartOptions = {}): Promise<Restarted> {
  return restartSync(input, opts);
}
