// Checkpoint of one process: stop it, save everything it is into one image
// stream, then let it go on (or end it with --kill once the image is safe).
// Any failure detaches the target exactly as it was.
import fs from 'node:fs';
import { readStat, readVmas, listThreads, listChildren } from './proc';
import { Tracee } from './ptrace/tracee';
import { Remote } from './ptrace/remote';
import { ImageWriter, RecordType } from './image/stream';
import { ImageProcess } from './image/schema';
import { classifyVmas, pagesToSave, dumpPages } from './kinds/memory';
import { specialVmas } from './kinds/vdso';
import { dumpCpu, dumpXcompPerm } from './kinds/registers';
import { dumpSignals } from './kinds/signals';
import { dumpFds } from './kinds/files';
import { dumpMm } from './kinds/mm';
import { dumpProcessAttrs, dumpThreadAttrs } from './kinds/process';
import { StasisError, UnsupportedError } from './sys/errno';
import { PAGE_SIZE } from './sys/x86';

export interface CheckpointOptions {
  /** End the process once the image is completely written and flushed. */
  kill?: boolean;
  /** Step-by-step progress messages. */
  log?: (msg: string) => void;
}

export interface CheckpointResult {
  pid: number;
  /** bytes of the whole image */
  imageBytes: number;
  /** bytes of page contents in it */
  pageBytes: number;
  vmas: number;
  fds: number;
  /** how long the process was stopped, in milliseconds */
  frozenMs: number;
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
  const threads = listThreads(pid);
  if (threads.length > 1) throw new UnsupportedError(`pid ${pid} has ${threads.length} threads: multi-threaded processes are not supported yet`);
  const children = listChildren(pid);
  if (children.length) throw new UnsupportedError(`pid ${pid} has child processes (${children.join(', ')}): process trees are not supported yet`);
}

/** A `syscall` instruction to inject through: where the task stopped, or in its vDSO. */
function locateSyscall(t: Tracee, vdso?: { start: number; end: number }): number {
  const rip = Number(t.saved!.get('rip'));
  try {
    const b = t.readMem(rip - 2, 2);
    if (b[0] === 0x0f && b[1] === 0x05) return rip - 2;
  } catch { /* rip-2 not readable: fall through to the vDSO */ }
  if (vdso) {
    const code = t.readMem(vdso.start, vdso.end - vdso.start);
    for (let i = 0; i + 1 < code.length; i++) if (code[i] === 0x0f && code[i + 1] === 0x05) return vdso.start + i;
  }
  throw new StasisError(`pid ${t.pid}: found no syscall instruction to run system calls in the task`);
}

function openOutput(output: string | number): { fd: number; close: (ok: boolean) => void } {
  if (typeof output === 'number') return { fd: output, close: () => {} };
  const fd = fs.openSync(output, 'w', 0o600);
  return {
    fd,
    close: (ok) => {
      if (ok) fs.fsyncSync(fd);
      fs.closeSync(fd);
      if (!ok) fs.rmSync(output, { force: true });
    },
  };
}

export function checkpointSync(pid: number, output: string | number, opts: CheckpointOptions = {}): CheckpointResult {
  const log = opts.log ?? (() => {});
  checkTarget(pid);
  const t = new Tracee(pid);
  let out: ReturnType<typeof openOutput> | undefined;
  let ok = false;
  try {
    t.seize();
    const frozenAt = process.hrtime.bigint();
    log(`pid ${pid} stopped`);
    checkTarget(pid); // a thread or child created before the stop
    const vmas = classifyVmas(readVmas(pid));
    const fds = dumpFds(pid);
    const attrs = dumpProcessAttrs(pid);
    log(`${vmas.length} VMAs, ${fds.length} fds`);
    t.syscallInsn = locateSyscall(t, specialVmas(vmas).get('[vdso]'));
    const remote = new Remote(t);
    remote.mapScratch(4 * PAGE_SIZE);
    let image: ImageProcess;
    try {
      const cpu = dumpCpu(t);
      const signals = dumpSignals(remote);
      const threadAttrs = dumpThreadAttrs(remote);
      const xcompPerm = dumpXcompPerm(remote);
      const mm = dumpMm(remote);
      image = {
        pid, ...attrs, xcompPerm: '0x' + xcompPerm.toString(16), mm, vmas, fds,
        threads: [{
          tid: pid, regs: cpu.regs.buf.toString('base64'), xstate: cpu.xstate.toString('base64'),
          signals, ...threadAttrs, inSyscall: cpu.inSyscall,
        }],
      };
    } finally {
      remote.unmapScratch();
    }
    const runs = vmas.map((v) => pagesToSave(pid, v));
    out = openOutput(output);
    const writer = new ImageWriter(out.fd);
    writer.json(RecordType.Process, image);
    const pageBytes = dumpPages(remote, vmas, runs, writer);
    writer.end({ pageBytes });
    out.close(true);
    out = undefined;
    log(`image written: ${writer.bytes} bytes, ${pageBytes} of pages`);
    const frozenMs = Number(process.hrtime.bigint() - frozenAt) / 1e6;
    if (opts.kill) {
      t.kill();
      log(`pid ${pid} killed`);
    } else {
      t.detach();
    }
    ok = true;
    return { pid, imageBytes: writer.bytes, pageBytes, vmas: vmas.length, fds: fds.length, frozenMs };
  } finally {
    if (!ok) {
      try { t.detach(); } catch { /* it is gone */ }
      out?.close(false);
    }
  }
}

/** Library entry point: checkpoint `pid` into a file path or an open fd. */
export async function checkpoint(pid: number, output: string | number, opts: CheckpointOptions = {}): Promise<CheckpointResult> {
  return checkpointSync(pid, output, opts);
}
