// Read-only system calls asked of a stopped task by several kinds at once
// (and, at restore, calls that only set, made in the same run).
// Each kind plans its calls (and the bytes each fills in the task's scratch
// area) and gets back a function that reads its answers; one run makes them
// all, in a target's main thread one round trip (two to four ptrace stops)
// where each kind's own calls took one or two each.
import { Remote, BatchCall } from './remote';
import { Tracee } from './tracee';
import { Gadget } from './gadget';
import { StasisError, injectedResult } from '../sys/errno';

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

  /** The bytes whatever the call gave (for a caller that reads them only where it succeeded). */
  get rawBytes(): Buffer {
    void this.raw;
    return this.filled;
  }

  /** The return value, a failure thrown by name. */
  get value(): number {
    return injectedResult(this.raw, this.name, this.pid, this.where);
  }
}

interface Planned {
  remote: Remote;
  name: string;
  nr: number;
  args: Args;
  where?: string;
  answer: Answer;
  at: number;
  len: number;
  zero: boolean;
}

export class Queries {
  /** the queries of the whole process (the main thread's), whose scratch area and run these share */
  private readonly root: Queries;
  private planned: Planned[] = [];

  constructor(readonly remote: Remote, root?: Queries) {
    this.root = root ?? this;
    if (!root) remote.reset();
  }

  get pid(): number {
    return this.remote.pid;
  }

  /** The same, asked of another thread of the process, run with these. */
  of(task: Tracee): Queries {
    return new Queries(this.root.remote.withTask(task), this.root);
  }

  /**
   * Plan a call. With `out`, it gets that many bytes of the scratch area
   * (zero when it runs if `zero`: for a call that may leave them as they
   * were), and `args` is given their address.
   */
  ask(name: string, nr: number, args: Args | ((out: number) => Args), opts: { out?: number; zero?: boolean; where?: string } = {}): Answer {
    const { root } = this;
    const scratch = root.remote;
    const len = opts.out ?? 0;
    // A full scratch area: what is planned so far runs now, and it starts over.
    if (len && scratch.scratchUsed + len + 16 > scratch.scratchSize) root.run();
    const at = len ? scratch.alloc(len) : 0;
    const answer = new Answer(name, this.remote.task.pid, opts.where);
    root.planned.push({ remote: this.remote, name, nr, args: typeof args === 'function' ? args(at) : args, where: opts.where, answer, at, len, zero: !!opts.zero });
    return answer;
  }

  /**
   * Calls that only set something, made in the same run as the questions
   * (each call into a task is a round trip), in their order and before
   * those planned after them; the returned check throws the first that
   * failed, by name.
   */
  setting(calls: BatchCall[]): () => void {
    const answers = calls.map((c) => this.ask(c.name, c.nr, c.args.map((a) => {
      if (typeof a === 'object') throw new StasisError(`${c.name}: a result of another call cannot be an argument in a run of queries (a bug in stasis)`);
      return a;
    }), { where: c.where }));
    return () => { for (const a of answers) void a.value; };
  }

  /**
   * Make every planned call, then hand each its answer: the main thread's
   * in one batch; other threads', which cannot run batches (Remote.batch),
   * call by call, a few threads' k-th calls at once (Tracee.injectTogether).
   */
  run(): void {
    const { remote, planned } = this.root;
    if (!planned.length) return;
    const used = remote.scratchUsed;
    // Only what asked for it (the area may hold what set calls point at),
    // neighbours in one write (a waitid for each child of a tree).
    const zeros: Array<{ at: number; end: number }> = [];
    for (const p of planned) {
      if (!p.zero) continue;
      const last = zeros.at(-1);
      if (last && p.at >= last.end && p.at - last.end < 16) last.end = p.at + p.len; // only alignment padding between
      else zeros.push({ at: p.at, end: p.at + p.len });
    }
    for (const z of zeros) remote.task.writeMem(z.at, Buffer.alloc(z.end - z.at));
    const raw = new Map<Planned, number>();
    const byTask = new Map<Remote, Planned[]>();
    for (const p of planned) {
      const list = byTask.get(p.remote);
      if (list) list.push(p);
      else byTask.set(p.remote, [p]);
    }
    const mine = byTask.get(remote) ?? [];
    byTask.delete(remote);
    remote.batchRaw(mine).forEach((r, k) => raw.set(mine[k], r));
    // Other threads call by call, as many at once as the gadget has blocks for them.
    const others = [...byTask.values()];
    const together = others.length > 1 && remote.task.injectsSafely ? Math.max(1, Gadget.existing(remote.task.tgid)?.otherBlocks ?? 1) : 1;
    for (let g = 0; g < others.length; g += together) {
      const group = others.slice(g, g + together);
      for (let k = 0; group.some((calls) => k < calls.length); k++) {
        const now = group.filter((calls) => k < calls.length).map((calls) => calls[k]);
        Tracee.injectTogether(now.map((p) => ({ task: p.remote.task, nr: p.nr, args: p.args }))).forEach((r, i) => raw.set(now[i], Number(r)));
      }
    }
    const mem = used ? remote.read(remote.scratch, used) : Buffer.alloc(0);
    for (const p of planned) p.answer.set(raw.get(p)!, p.len ? mem.subarray(p.at - remote.scratch, p.at - remote.scratch + p.len) : Buffer.alloc(0));
    this.root.planned = [];
    remote.reset();
  }
}

