// A stopped task with a scratch area of its own memory, so injected system
// calls can take pointers (paths, structs) and hand results back.
import { Tracee } from './tracee';
import { SYS, PAGE_SIZE } from '../sys/x86';
import { StasisError } from '../sys/errno';

export const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4;
export const MAP_SHARED = 1, MAP_PRIVATE = 2, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x100, MAP_FIXED_NOREPLACE = 0x100000;
export const AT_FDCWD = -100;

export class Remote {
  readonly task: Tracee;
  scratch = 0;
  scratchSize = 0;
  private used = 0;

  constructor(task: Tracee) {
    this.task = task;
  }

  /** Another thread of the same process, sharing this scratch area. */
  withTask(t: Tracee): Remote {
    const r = new Remote(t);
    r.scratch = this.scratch;
    r.scratchSize = this.scratchSize;
    return r;
  }

  get pid(): number {
    return this.task.pid;
  }

  call(name: string, nr: number, args: Array<number | bigint> = [], where?: string): number {
    return this.task.call(name, nr, args, where);
  }

  /** Map a private read-write scratch area at `hint` (or anywhere when 0). */
  mapScratch(size: number, hint = 0): void {
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0);
    this.scratch = this.call('mmap', SYS.mmap, [hint, size, PROT_READ | PROT_WRITE, flags, -1, 0], 'scratch area');
    this.scratchSize = size;
    this.used = 0;
  }

  unmapScratch(): void {
    if (!this.scratch) return;
    this.call('munmap', SYS.munmap, [this.scratch, this.scratchSize], 'scratch area');
    this.scratch = 0;
  }

  /** Forget everything placed in scratch (between independent calls). */
  reset(): void {
    this.used = 0;
  }

  alloc(len: number): number {
    const aligned = (len + 15) & ~15;
    if (this.used + aligned > this.scratchSize) throw new StasisError(`scratch area of pid ${this.pid} too small for ${len} bytes`);
    const addr = this.scratch + this.used;
    this.used += aligned;
    return addr;
  }

  putBytes(b: Buffer): number {
    const addr = this.alloc(b.length);
    this.task.writeMem(addr, b);
    return addr;
  }

  putString(s: string): number {
    return this.putBytes(Buffer.from(s + '\0', 'utf8'));
  }

  read(addr: number, len: number): Buffer {
    return this.task.readMem(addr, len);
  }
}

export function pageAlign(n: number): number {
  return Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
}
