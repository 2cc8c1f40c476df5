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

/** Transform the blank task into the image's process. */
function rebuild(t: Tracee, img: LoadedImage, log: (m: string) => void): void {
  const p = img.process;
  const th = p.threads[0];
  const remote = new Remote(t);
  t.syscallInsn = BLANK_SYSCALL;
  const live = readMaps(t.pid);
  // Our own page: a `syscall; int3` to inject through, then scratch space.
  const gadget = findGap(GADGET_SIZE, [...p.vmas, ...live]);
  remote.call('mmap', SYS.mmap, [gadget, GADGET_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0], 'injection page');
  t.writeMem(gadget, Buffer.from([0x0f, 0x05, 0xcc]));
  t.syscallInsn = gadget;
  remote.scratch = gadget + PAGE_SIZE;
  remote.scratchSize = GADGET_SIZE - PAGE_SIZE;
  remote.call('close_range', SYS.close_range, [0, 0xffffffff, 0], 'inherited fds');
  const specials = specialVmas(live);
  for (const v of live) {
    if (specials.has(v.path)) continue;
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

export function restartSync(input: string | number | LoadedImage, opts: RestartOptions = {}): Restarted {
  const log = opts.log ?? (() => {});
  const img = typeof input === 'object' ? input : loadImage(input);
  log(`image of pid ${img.process.pid} (${img.process.comm}) verified`);
  preflight(img);
  const pid = spawnBlank({ setsid: opts.setsid });
  const t = new Tracee(pid);
  try {
    t.seize({ exitKill: true });
    rebuild(t, img, log);
    t.detach(false);
  } catch (e) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
    try { waitpidSync(pid, __WALL); } catch { /* reaped */ }
    t.closeMem();
    if (e instanceof StasisError) throw new StasisError(`restart failed, nothing left running: ${e.message}`);
    throw e;
  }
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
