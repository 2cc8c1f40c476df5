// Pipes and FIFOs: which fds of the tree share one, the bytes in flight
// (peeked with tee(2), never consumed), and their re-creation: stasis itself
// holds every pipe and FIFO while the tree is rebuilt, so the tasks open
// their ends through /proc without blocking, and the saved bytes are
// written back before anyone reads.
import fs from 'node:fs';
import { ImagePipe } from '../image/schema';
import { syscall } from '../sys/libc';
import { StasisError, UnsupportedError } from '../sys/errno';

const SYS_PIPE2 = 293, SYS_TEE = 276, SYS_FCNTL = 72;
const F_SETPIPE_SZ = 1031, F_GETPIPE_SZ = 1032;
const O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, O_NOFOLLOW = 0o400000;
const SPLICE_F_NONBLOCK = 2;

interface Holder { pid: number; fd: number }

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
   */
  refuseOutsiders(tree: Set<number>, external: string[] = []): void {
    const wanted = new Map<string, number>();
    for (const [ino, p] of this.pipes) if (p.kind === 'pipe') wanted.set(`pipe:[${ino}]`, ino);
    if (!wanted.size) return;
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d) || tree.has(Number(d))) continue;
      let fds: string[];
      try {
        fds = fs.readdirSync(`/proc/${d}/fd`);
      } catch {
        continue;
      }
      for (const fd of fds) {
        let link: string;
        try {
          link = fs.readlinkSync(`/proc/${d}/fd/${fd}`);
        } catch {
          continue;
        }
        const ino = wanted.get(link);
        if (ino === undefined) continue;
        const p = this.pipes.get(ino)!;
        if (external.includes(link)) {
          p.external = true;
          continue;
        }
        throw new UnsupportedError(`fd ${p.holder.fd} of pid ${p.holder.pid}: ${link} is shared with pid ${d} outside the tree; pass --external ${link} to checkpoint it and --inherit-fd at restart`);
      }
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

  /** `inherit`: for external pipes, "pipe:[INO]" -> an fd of this process on the pipe to use. */
  constructor(pipes: ImagePipe[], inherit: Record<string, number> = {}) {
    try {
      for (const p of pipes) {
        const data = Buffer.from(p.data, 'base64');
        if (p.external) {
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
          this.held.set(p.id, { path: () => `/proc/${process.pid}/fd/${both}`, fds: [both] });
        } else if (p.kind === 'pipe') {
          const [r, w] = newPipe(p.size);
          writeAll(w, data, `pipe ${p.id}`);
          this.held.set(p.id, { path: (write) => `/proc/${process.pid}/fd/${write ? w : r}`, fds: [r, w] });
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
