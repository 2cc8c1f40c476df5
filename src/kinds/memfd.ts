// memfd files: anonymous memory files, mapped shared and/or held as fds.
// Their contents are saved once per file (holes skipped) with their seals;
// at restart stasis creates each one itself and the tasks open it through
// /proc, so every mapping and fd meets the same file again.
import fs from 'node:fs';
import { z, lazySchema } from '../image/zod';
import type { ImageMemfd } from '../image/schema';
import { memfdCreate, syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { count } from '../image/fields';
import { FdKind, openHeld, seekTo } from './fdkind';

const SYS_LSEEK = 8, SYS_FCNTL = 72;
const SEEK_DATA = 3, SEEK_HOLE = 4;
const F_ADD_SEALS = 1033, F_GET_SEALS = 1034;
const MFD_CLOEXEC = 1, MFD_ALLOW_SEALING = 2;
const O_RDONLY = 0;

/** "/memfd:NAME (deleted)" -> NAME, or null for any other path. */
export function memfdName(path: string): string | null {
  const m = /^\/memfd:(.*) \(deleted\)$/.exec(path);
  return m ? m[1] : null;
}

/** An fd on a memfd: its id in the Memfds record; `pos` its offset. */
export const MemfdFd = lazySchema(() => z.object({ kind: z.literal('memfd'), memfd: count }));
export type MemfdFd = z.infer<typeof MemfdFd>;

export const memfdKind: FdKind<MemfdFd> = {
  kinds: ['memfd'],
  claims: (f) => memfdName(f.target) !== null,
  dump(f, ctx) {
    if (!ctx.memfds) throw new StasisError(`${f.where}: a memfd outside a checkpoint`);
    return { kind: 'memfd', pos: f.info().pos, memfd: ctx.memfds.note(Number(f.stat().ino), memfdName(f.target)!, `/proc/${f.pid}/fd/${f.fd}`) };
  },
  sharingKey: (r) => `memfd:${r.memfd}`,
  open(remote, r, ctx, where) {
    if (!ctx.memfds) throw new StasisError(`${where}: a memfd without the Memfds record`);
    return openHeld(remote, ctx.memfds.pathFor(r.memfd), r, where);
  },
  settle: seekTo,
};

/**
 * A program started from a memfd (fexecve, execveat with AT_EMPTY_PATH) has
 * it as exe and maps it privately: neither is restored yet.
 */
export function refuseMemfdExe(pid: number): void {
  let exe: string;
  try {
    exe = fs.readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return; // no exe (kernel thread): refused elsewhere
  }
  const name = memfdName(exe);
  if (name !== null) {
    throw new UnsupportedError(`pid ${pid}: its executable is the memfd "${name}" (started with fexecve or execveat), which stasis cannot restore yet; run the program from a file on disk`);
  }
}

/** The byte ranges of a file that hold data (SEEK_DATA / SEEK_HOLE): holes hold nothing. */
export function dataRanges(fd: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let off = 0; off < size;) {
    let data: number;
    try {
      data = syscall(SYS_LSEEK, 'lseek(SEEK_DATA)', fd, off, SEEK_DATA);
    } catch {
      break; // ENXIO: only a hole is left
    }
    const hole = syscall(SYS_LSEEK, 'lseek(SEEK_HOLE)', fd, data, SEEK_HOLE);
    out.push([data, hole]);
    off = hole;
  }
  return out;
}

export class MemfdTable {
  private readonly files = new Map<number, { name: string; path: string }>();

  /** Remember a memfd seen through `procPath` (an fd or map_files link of a task). */
  note(ino: number, name: string, procPath: string): number {
    // An fd is better than a map_files link: anyone who may trace the task
    // opens it, where map_files needs CAP_CHECKPOINT_RESTORE.
    const known = this.files.get(ino);
    if (!known || (known.path.includes('/map_files/') && !procPath.includes('/map_files/'))) this.files.set(ino, { name, path: procPath });
    return ino;
  }

  /** Contents of every memfd, data segments only, with their seals (`contents` false: no segments). */
  collect(contents = true): ImageMemfd[] {
    const out: ImageMemfd[] = [];
    for (const [id, f] of this.files) {
      let fd: number;
      try {
        fd = fs.openSync(f.path, O_RDONLY);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EPERM' && f.path.includes('/map_files/')) {
          throw new UnsupportedError(`memfd "${f.name}" (${f.path}): only mapped, not held as an fd, and reading it through map_files needs CAP_CHECKPOINT_RESTORE (EPERM): checkpoint as root, or keep an fd of the memfd open in the process`);
        }
        throw new StasisError(`memfd "${f.name}" (${f.path}): cannot open (${code})`);
      }
      try {
        const size = fs.fstatSync(fd).size;
        let seals = 0;
        try { seals = syscall(SYS_FCNTL, 'fcntl(F_GET_SEALS)', fd, F_GET_SEALS); } catch { /* sealing not allowed */ }
        const segments: ImageMemfd['segments'] = [];
        for (const [data, hole] of contents ? dataRanges(fd, size) : []) {
          const b = Buffer.alloc(hole - data);
          fs.readSync(fd, b, 0, b.length, data);
          segments.push({ offset: data, data: b.toString('base64') });
        }
        out.push({ id, name: f.name, size, seals, segments });
      } finally {
        fs.closeSync(fd);
      }
    }
    return out;
  }
}

/** Restore side: stasis creates and holds each memfd until the tree has it. */
export class MemfdKeeper {
  private readonly held = new Map<number, { fd: number; seals: number }>();
  /** How a task reaches one of our fds (through the namespace init in a user-namespace restart). */
  fdPath = (fd: number) => `/proc/${process.pid}/fd/${fd}`;

  constructor(files: ImageMemfd[]) {
    try {
      for (const f of files) {
        const fd = memfdCreate(f.name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        this.held.set(f.id, { fd, seals: f.seals });
        fs.ftruncateSync(fd, f.size);
        for (const s of f.segments) {
          const b = Buffer.from(s.data, 'base64');
          for (let done = 0; done < b.length;) done += fs.writeSync(fd, b, done, b.length - done, s.offset + done);
        }
      }
    } catch (e) {
      this.close();
      throw e instanceof StasisError ? e : new StasisError(`re-creating memfd files: ${(e as Error).message}`);
    }
  }

  /** The path a task opens to reach memfd `id`. */
  pathFor(id: number): string {
    const h = this.held.get(id);
    if (!h) throw new StasisError(`the image names memfd ${id} but carries no such file`);
    return this.fdPath(h.fd);
  }

  /** Our fds that tasks open through /proc. */
  heldFds(): number[] {
    return [...this.held.values()].map((h) => h.fd);
  }

  /** Seals last: a write seal would forbid the writable mappings made before. */
  seal(): void {
    for (const h of this.held.values()) {
      if (h.seals) syscall(SYS_FCNTL, 'fcntl(F_ADD_SEALS)', h.fd, F_ADD_SEALS, h.seals);
    }
  }

  close(): void {
    for (const h of this.held.values()) fs.closeSync(h.fd);
    this.held.clear();
  }
}

