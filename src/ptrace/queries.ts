// Read-only system calls asked of a stopped task by several kinds at once.
// Each kind plans its calls (and the bytes each fills in the task's scratch
// area) and gets back a function that reads its answers; one run makes them
// all, in a target's main thread one round trip (two to four ptrace stops)
// where each kind's own calls took one or two each.
import { Remote } from './remote';
import { StasisError, SyscallError } from '../sys/errno';

type Args = Array<number | bigint>;

/** What one planned call gave, once its queries ran. */
export class Answer {
  private got?: number;
  private filled: Buffer = Buffer.alloc(0);

  constructor(readonly name: string, readonly pid: number, readonly where?: string) {}

  set(raw: number, bytes: Buffer): void {
    this.got = raw;
    this.filled = bytes;
  }

  /** The call's return value as the kernel gave it (negative: -errno). */
  get raw(): number {
    if (this.got === undefined) throw new StasisError(`pid ${this.pid}: ${this.name} was read before its queries ran (a bug in stasis)`);
    return this.got;
  }

  /** The bytes the call filled (its `out`), a failure thrown by name. */
  get bytes(): Buffer {
    void this.value;
    return this.filled;
  }

  /** The bytes as they are whatever the call gave (zero where it wrote nothing). */
  get rawBytes(): Buffer {
    void this.raw;
    return this.filled;
  }

  /** The return value, a failure thrown by name. */
  get value(): number {
    const r = this.raw;
    if (r < 0 && r > -4096) throw new SyscallError(`${this.name} in pid ${this.pid}`, -r, this.where);
    return r;
  }
}

export class Queries {
  private calls: Array<{ name: string; nr: number; args: Args; where?: string }> = [];
  private answers: Array<{ answer: Answer; at: number; len: number }> = [];

  constructor(readonly remote: Remote) {
    remote.reset();
  }

  get pid(): number {
    return this.remote.pid;
  }

  /**
   * Plan a call. With `out`, it gets that many bytes of the scratch area,
   * zero when it runs, and `args` is given their address.
   */
  ask(name: string, nr: number, args: Args | ((out: number) => Args), opts: { out?: number; where?: string } = {}): Answer {
    const len = opts.out ?? 0;
    // A full scratch area: what is planned so far runs now, and it starts over.
    if (len && this.remote.scratchUsed + len + 16 > this.remote.scratchSize) this.run();
    const at = len ? this.remote.alloc(len) : 0;
    const answer = new Answer(name, this.pid, opts.where);
    this.calls.push({ name, nr, args: typeof args === 'function' ? args(at) : args, where: opts.where });
    this.answers.push({ answer, at, len });
    return answer;
  }

  /** Make every planned call (in as few round trips as the task allows), then hand each its answer. */
  run(): void {
    if (!this.calls.length) return;
    const { remote } = this;
    const used = remote.scratchUsed;
    if (used) remote.task.writeMem(remote.scratch, Buffer.alloc(used));
    const raw = remote.batchRaw(this.calls);
    const mem = used ? remote.read(remote.scratch, used) : Buffer.alloc(0);
    this.answers.forEach(({ answer, at, len }, k) => answer.set(raw[k], len ? mem.subarray(at - remote.scratch, at - remote.scratch + len) : mem.subarray(0, 0)));
    this.calls = [];
    this.answers = [];
    remote.reset();
  }
}

/** One kind's queries run at once, for its answer now (at restore, where nothing is gathered). */
export function askNow<T>(remote: Remote, plan: (q: Queries) => () => T): T {
  const q = new Queries(remote);
  const answer = plan(q);
  q.run();
  return answer();
}
