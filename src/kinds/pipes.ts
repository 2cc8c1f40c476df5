// Pipes and FIFOs: which fds of the tree share one, the bytes in flight
// (peeked with tee(2), never consumed), and their re-creation: stasis itself
// holds every pipe and FIFO while the tree is rebuilt, so the tasks open
// their ends through /proc without blocking, and the saved bytes are
// written back before anyone reads.
import fs from 'node:fs';
import { outsideFdLinks } from '../proc';
import { z, lazySchema } from '../image/zod';
import type { ImagePipe } from '../image/schema';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';
import { count } from '../image/fields';
import { FdKind, openHeld } from './fdkind';

const SYS_PIPE2 = 293, SYS_TEE = 276, SYS_FCNTL = 72;
const F_SETPIPE_SZ = 1031, F_GETPIPE_SZ = 1032;
const O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, O_NOFOLLOW = 0o400000;
const SPLICE_F_NONBLOCK = 2;

interface Holder { pid: number; fd: number }

/** A pipe end: its id in the Pipes record. */
export const PipeFd = lazySchema(() => z.object({ kind: z.literal('pipe'), pipe: count }));
/** A FIFO opened by path (the common `path`): its id in the Pipes record. */
export const FifoFd = lazySchema(() => z.object({ kind: z.literal('fifo'), pipe: count }));
type PipeOrFifoFd = z.infer<typeof PipeFd> | z.infer<typeof FifoFd>;

/** Pipes, and FIFOs (found by stat once no other kind claimed the path). */
export const pipeKind: FdKind<PipeOrFifoFd> = {
  kinds: ['pipe', 'fifo'],
  claims: (f) => /^pipe:\[\d+\]$/.test(f.target) || (f.target.startsWith('/') && f.stat().isFIFO()),
  dump(f, ctx) {
    const pipe = f.target.startsWith('pipe:');
    const kind = pipe ? 'pipe' : 'fifo';
    return { kind, pos: 0, pipe: ctx.pipes.note(f.pid, f.fd, kind, Number(f.stat().ino), pipe ? undefined : f.target) };
  },
  sharingKey: (r) => `pipe:${r.pipe}`,
  open: (remote, r, ctx, where) => openHeld(remote, ctx.pipes.pathFor(r.pipe, r.flags), r, where),
};

export class PipeTable {
  private readonly pipes = new Map<number, { kind: 'pipe' | 'fifo'; path?: string; holder: Holder; external?: boolean }>();

  /** Remember a pipe or FIFO seen at fd `fd` of `pid`; returns its id. */
  note(pid: number, fd: number, kind: 'pipe' | 'fifo', ino: number, path?: string): number {
    if (!this.pipes.has(ino)) this.pipes.set(ino, { kind, path, holder: { pid, fd } });
    return ino;
  }

  get size(): number {
    return this.pipes.size;
  }

  /**
   * A pipe also open in a process outside the tree cannot be taken along,
   * unless the user declared it external (`external` holds "pipe:[INO]"
   * names): then it is recorded without its bytes, to be handed in again.
   * A FIFO held open outside keeps its bytes through the restart: putting
   * the saved ones back would double them, so it must be declared external
   * too (by path), and its bytes are left where they are.
   */
  refuseOutsiders(tree: Set<number>, external: string[] = []): void {
    const wanted = new Map<string, number>();
    for (const [ino, p] of this.pipes) wanted.set(p.kind === 'pipe' ? `pipe:[${ino}]` : p.path!, ino);
    if (!wanted.size) return;
    for (const { pid: d, fd, link } of outsideFdLinks(tree)) {
      const ino = wanted.get(link);
      if (ino === undefined) continue;
      const p = this.pipes.get(ino)!;
      if (p.kind === 'fifo') {
        try {
          if (fs.statSync(`/proc/${d}/fd/${fd}`).ino !== ino) continue; // another file at that path now
        } catch {
          continue;
        }
      }
      if (external.includes(link)) {
        p.external = true;
        continue;
      }
      if (p.kind === 'fifo') {
        throw new UnsupportedError(`fd ${p.holder.fd} of pid ${p.holder.pid}: FIFO ${link} is also open in pid ${d} outside the tree, which keeps its unread bytes; pass --external ${link} to leave them in the FIFO`);
      }
      throw new UnsupportedError(`fd ${p.holder.fd} of pid ${p.holder.pid}: ${link} is shared with pid ${d} outside the tree; pass --external ${link} to checkpoint it and --inherit-fd at restart`);
    }
  }

  /** The unread bytes of every pipe, copied with tee(2) so nothing is consumed. */
  collect(): ImagePipe[] {
    const out: ImagePipe[] = [];
    for (const [id, p] of this.pipes) {
      const src = fs.openSync(`/proc/${p.holder.pid}/fd/${p.holder.fd}`, O_RDONLY | O_NONBLOCK);
      try {
        const size = syscall(SYS_FCNTL, 'fcntl(F_GETPIPE_SZ)', src, F_GETPIPE_SZ);
        const data = p.external ? '' : peek(src, size).toString('base64');
        out.push({ id, kind: p.kind, path: p.path, size, data, ...(p.external ? { external: true } : {}) });
      } finally {
        fs.closeSync(src);
      }
    }
    return out;
  }
}

function newPipe(size: number): [number, number] {
  const fds = Buffer.alloc(8);
  syscall(SYS_PIPE2, 'pipe2', fds, O_CLOEXEC);
  const r = fds.readInt32LE(0), w = fds.readInt32LE(4);
  if (size > 0) syscall(SYS_FCNTL, 'fcntl(F_SETPIPE_SZ)', w, F_SETPIPE_SZ, size);
  return [r, w];
}

function peek(src: number, size: number): Buffer {
  const [r, w] = newPipe(size);
  try {
    let n: number;
    try {
      n = syscall(SYS_TEE, 'tee', src, w, size, SPLICE_F_NONBLOCK);
    } catch (e) {
      if ((e as { code?: string }).code === 'EAGAIN') return Buffer.alloc(0); // empty
      throw e;
    }
    const data = Buffer.alloc(n);
    let got = 0;
    while (got < n) got += fs.readSync(r, data, got, n - got, null);
    return data;
  } finally {
    fs.closeSync(r);
    fs.closeSync(w);
  }
}

/** Restore side: stasis holds each pipe/FIFO until every task has its ends. */
export class PipeKeeper {
  private readonly held = new Map<number, { path: (write: boolean) => string; fds: number[] }>();
  /** How a task reaches one of our fds (through the namespace init in a user-namespace restart). */
  fdPath = (fd: number) => `/proc/${process.pid}/fd/${fd}`;

  /** `inherit`: for external pipes, "pipe:[INO]" -> an fd of this process on the pipe to use. */
  constructor(pipes: ImagePipe[], inherit: Record<string, number> = {}) {
    try {
      for (const p of pipes) {
        const data = Buffer.from(p.data, 'base64');
        if (p.external && p.kind === 'fifo') {
          // Still open outside with its bytes: only held open while the tasks open it.
          let fd: number;
          try {
            fd = fs.openSync(p.path!, O_RDWR | O_NONBLOCK);
          } catch (e) {
            throw new StasisError(`FIFO ${p.path}: cannot open (${(e as NodeJS.ErrnoException).code}); it must exist at restart`);
          }
          this.held.set(p.id, { path: () => p.path!, fds: [fd] });
        } else if (p.external) {
          const name = `pipe:[${p.id}]`;
          const fd = inherit[name];
          if (fd === undefined) throw new StasisError(`${name} was connected outside the tree at checkpoint time: pass --inherit-fd FD:${name} with an fd of yours on the pipe to connect it to`);
          // Held read-write so that no task's open of it can block.
          let both: number;
          try {
            both = fs.openSync(`/proc/${process.pid}/fd/${fd}`, O_RDWR);
          } catch (e) {
            throw new StasisError(`--inherit-fd ${fd}:${name}: fd ${fd} cannot be opened as a pipe (${(e as NodeJS.ErrnoException).code})`);
          }
          if (!fs.fstatSync(both).isFIFO()) {
            fs.closeSync(both);
            throw new StasisError(`--inherit-fd ${fd}:${name}: fd ${fd} is not a pipe`);
          }
          this.held.set(p.id, { path: () => this.fdPath(both), fds: [both] });
        } else if (p.kind === 'pipe') {
          const [r, w] = newPipe(p.size);
          writeAll(w, data, `pipe ${p.id}`);
          this.held.set(p.id, { path: (write) => this.fdPath(write ? w : r), fds: [r, w] });
        } else {
          // O_RDWR on a FIFO never blocks and keeps its buffer alive.
          let fd: number;
          try {
            fd = fs.openSync(p.path!, O_RDWR | O_NONBLOCK | O_NOFOLLOW);
          } catch (e) {
            throw new StasisError(`FIFO ${p.path}: cannot open (${(e as NodeJS.ErrnoException).code}); it must exist at restart`);
          }
          // Saved bytes go into a FIFO only, never into a file named in its place.
          if (!fs.fstatSync(fd).isFIFO()) {
            fs.closeSync(fd);
            throw new StasisError(`FIFO ${p.path}: is not a FIFO at restart; refusing to write its saved bytes`);
          }
          syscall(SYS_FCNTL, 'fcntl(F_SETPIPE_SZ)', fd, F_SETPIPE_SZ, p.size);
          writeAll(fd, data, `FIFO ${p.path}`);
          this.held.set(p.id, { path: () => p.path!, fds: [fd] });
        }
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** The path a task opens (with its saved flags) to get an end of pipe `id`. */
  pathFor(id: number, flags: number): string {
    const h = this.held.get(id);
    if (!h) throw new StasisError(`the image names pipe ${id} but carries no such pipe`);
    return h.path((flags & 3) !== O_RDONLY);
  }

  /** Our fds that tasks open through /proc. */
  heldFds(): number[] {
    return [...this.held.values()].flatMap((h) => h.fds);
  }

  close(): void {
    for (const h of this.held.values()) for (const fd of h.fds) fs.closeSync(fd);
    this.held.clear();
  }
}

function writeAll(fd: number, data: Buffer, what: string): void {
  let off = 0;
  while (off < data.length) {
    try {
      off += fs.writeSync(fd, data, off, data.length - off);
    } catch (e) {
      throw new StasisError(`${what}: writing ${data.length} saved bytes back: ${(e as NodeJS.ErrnoException).code}`);
    }
  }
}
