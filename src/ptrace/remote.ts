// A stopped task with a scratch area of its own memory, so injected system
// calls can take pointers (paths, structs) and hand results back.
import fs from 'node:fs';
import { Tracee } from './tracee';
import { Gadget } from './gadget';
import { SYS, writeU64 } from '../sys/x86';
import { StasisError, injectedResult } from '../sys/errno';

export const PROT_READ = 1, PROT_WRITE = 2, PROT_EXEC = 4;
export const MAP_SHARED = 1, MAP_PRIVATE = 2, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x100, MAP_NORESERVE = 0x4000, MAP_FIXED_NOREPLACE = 0x100000;
export const AT_FDCWD = -100;

/** An argument that is the result of an earlier call of the same batch (say, the fd it opened). */
export interface ResultOf {
  result: number;
}

/** One system call of a batch, with what it is about (for errors). */
export interface BatchCall {
  name: string;
  nr: number;
  args: Array<number | bigint | ResultOf>;
  where?: string;
}

/** Bytes of generated code per call: seven movabs, syscall, store of rax. */
const BATCH_CALL_BYTES = 7 * 10 + 2 + 10;
/** The end of a safe batch: done flag, a wait, jump home. */
const SAFE_TAIL_BYTES = 5 + 9 + 7 * 10 + 2 + 10 + 2;
/** How long a safe batch waits to be stopped before it goes home by itself (stasis gone). */
const SAFE_BATCH_WAIT_S = Number(process.env.STASIS_TEST_BATCH_WAIT_S) || 2;
const SYS_SELECT = 23, EACCES = 13;
const ARG_REG_MOVABS = [[0x48, 0xbf], [0x48, 0xbe], [0x48, 0xba], [0x49, 0xba], [0x49, 0xb8], [0x49, 0xb9]];
/** mov reg, [reg] for each argument register: an earlier result loaded through its address. */
const ARG_REG_LOAD = [[0x48, 0x8b, 0x3f], [0x48, 0x8b, 0x36], [0x48, 0x8b, 0x12], [0x4d, 0x8b, 0x12], [0x4d, 0x8b, 0x00], [0x4d, 0x8b, 0x09]];
const isRef = (a: number | bigint | ResultOf | undefined): a is ResultOf => typeof a === 'object';
const MOV_RAX = [0x48, 0xb8];

let callTemplate: Buffer | undefined;
/** A call's code with every imm64 zero: seven movabs, syscall, mov [imm64], rax. */
function template(): Buffer {
  if (callTemplate) return callTemplate;
  const b = Buffer.alloc(BATCH_CALL_BYTES);
  [MOV_RAX, ...ARG_REG_MOVABS].forEach((op, i) => b.set(op, i * 10));
  b.set([0x0f, 0x05, 0x48, 0xa3], 70);
  return callTemplate = b;
}

/**
 * A u64 into four u16s from `i` (v may be negative: two's complement).
 * Typed-array stores take any integer modulo 2^16, and the divisions by
 * powers of two are exact below 2^53.
 */
function putU64(u16: Uint16Array, i: number, v: number | bigint): void {
  if (typeof v === 'bigint') {
    if (v >= -0x1fffffffffffffn && v <= 0x1fffffffffffffn) {
      v = Number(v);
    } else {
      const lo = Number(BigInt.asUintN(32, v)), hi = Number(BigInt.asUintN(32, v >> 32n));
      u16[i] = lo;
      u16[i + 1] = lo / 0x10000;
      u16[i + 2] = hi;
      u16[i + 3] = hi / 0x10000;
      return;
    }
  }
  u16[i] = v;
  u16[i + 1] = Math.floor(v / 0x10000);
  u16[i + 2] = Math.floor(v / 0x100000000);
  u16[i + 3] = Math.floor(v / 0x1000000000000);
}

export class Remote {
  readonly task: Tracee;
  scratch = 0;
  scratchSize = 0;
  /** executable area for batched calls (0: none, calls run one by one) */
  batchArea = 0;
  /** the same in a target (see batch) */
  safeBatchArea = 0;
  batchSize = 0;
  private used = 0;

  constructor(task: Tracee) {
    this.task = task;
  }

  /** Another thread of the same process, sharing this scratch area. */
  withTask(t: Tracee): Remote {
    const r = new Remote(t);
    r.scratch = this.scratch;
    r.scratchSize = this.scratchSize;
    r.batchArea = this.batchArea;
    r.safeBatchArea = this.safeBatchArea;
    r.batchSize = this.batchSize;
    return r;
  }

  /**
   * Independent system calls in one go: code that makes every call and
   * stores each result is written into the batch area and run, one ptrace
   * round trip for all of them instead of one (two stops in a target) each.
   * In a restore stub the code ends in an int3; in a target's main thread
   * in a wait that goes home by itself (Tracee.runSafely). Each result is
   * then checked, and the first failure thrown by name. Elsewhere (another
   * thread of a target, whose way home cannot unmap code it may still be
   * running) the calls go one by one.
   */
  batch(calls: BatchCall[]): number[] {
    return this.checked(calls, this.batchRaw(calls));
  }

  /**
   * The same, every call made whatever the others gave: each raw result
   * (negative: -errno) for the caller to judge (Queries).
   */
  batchRaw(calls: BatchCall[]): number[] {
    const safe = this.task.injectsSafely;
    const area = safe ? (this.task.pid === this.task.tgid ? this.safeBatchArea : 0) : this.batchArea;
    if (!area || calls.length < 2) {
      const out: number[] = [];
      for (const c of calls) out.push(Number(this.task.injectRaw(c.nr, c.args.map((a) => (isRef(a) ? out[a.result] : a)))));
      return out;
    }
    const out: number[] = [];
    for (let i = 0; i < calls.length; i += this.perRun) {
      const part = calls.slice(i, i + this.perRun);
      const { code, at, done, end } = this.batchCode(part, area, i);
      // The code and its data are in place before the task points at them.
      this.task.writeMem(area, code);
      if (!safe) this.task.runUntilTrap(area, `a batch of ${part.length} system calls`);
      else this.task.runSafely(area, end, done, `a batch of ${part.length} system calls`);
      out.push(...this.stored(part.length, at));
    }
    return out;
  }

  /** The `n` results a batch stored at `at`. */
  private stored(n: number, at: number): number[] {
    const res = this.task.readMem(at, n * 8);
    const out: number[] = [];
    for (let k = 0; k < n; k++) out.push(Number(res.readBigInt64LE(k * 8)));
    return out;
  }

  /** Raw results, the first failure thrown by name. */
  private checked(calls: BatchCall[], raw: number[]): number[] {
    return calls.map((c, k) => injectedResult(raw[k], c.name, this.pid, c.where));
  }

  /**
   * A batch in a restore stub, started: the stub makes the calls while the
   * caller goes on (touching neither this task nor its memory); the
   * returned function waits for them and gives their results. Calls that
   * do not fit in one batch area run first, before it returns.
   */
  startBatch(calls: BatchCall[]): () => number[] {
    if (this.task.injectsSafely || !this.batchArea || !calls.length) {
      const results = this.batch(calls);
      return () => results;
    }
    const last = calls.length - (calls.length % this.perRun || this.perRun);
    const first = last ? this.batch(calls.slice(0, last)) : [];
    const part = calls.slice(last);
    const { code, at } = this.batchCode(part, this.batchArea, last);
    this.task.writeMem(this.batchArea, code);
    const finish = this.task.startUntilTrap(this.batchArea);
    return () => {
      finish(`a batch of ${part.length} system calls`);
      return [...first, ...this.checked(part, this.stored(part.length, at))];
    };
  }

  /** How many calls one run of a batch holds: a call may use the result of another only within one. */
  get callsPerRun(): number {
    return this.perRun;
  }

  private get perRun(): number {
    return Math.floor((this.batchSize - (this.task.injectsSafely ? SAFE_TAIL_BYTES + 32 : 1)) / (BATCH_CALL_BYTES + 8));
  }

  /**
   * The code of a batch at `area`: each call and the store of its result,
   * then an int3 (a restore stub) or, in a target: done = 1; select(0, 0,
   * 0, 0, 2 s); jmp home, with the select's timeout after the code. Only
   * the registers the way home reloads are touched, and no flags. select,
   * interrupted, returns -ERESTARTNOHAND without touching the task's
   * restart block (a futex or nanosleep with a timeout would replace the
   * one of the call the task was stopped in).
   */
  private batchCode(part: BatchCall[], area: number, first: number): { code: Buffer; at: number; done: number; end: number } {
    const safe = this.task.injectsSafely;
    let refs = 0;
    for (const c of part) for (const a of c.args) if (isRef(a)) refs++;
    const length = part.length * BATCH_CALL_BYTES + refs * ARG_REG_LOAD[0].length + (safe ? SAFE_TAIL_BYTES : 1);
    const at = Math.ceil((area + length) / 8) * 8;
    const done = at + part.length * 8;
    const timeout = done + 8;
    // Written in place: made of arrays and 8-byte Buffers, the code of
    // the 64 sigaction calls took ~3 ms of the frozen time of `sleep`.
    const code = Buffer.alloc(safe ? timeout + 16 - area : length);
    let o = 0;
    const op = (...b: number[]) => {
      for (const x of b) code[o++] = x;
    };
    // No spread or iterator: run once per command, this code stays in V8's
    // interpreter, where they cost microseconds per instruction written.
    const movabs = (prefix: readonly number[], v: number | bigint) => {
      for (let i = 0; i < prefix.length; i++) code[o++] = prefix[i];
      writeU64(code, o, v);
      o += 8;
    };
    const syscall = (nr: number | bigint, args: ReadonlyArray<number | bigint | ResultOf>, index: number) => {
      movabs(MOV_RAX, nr);
      for (let a = 0; a < ARG_REG_MOVABS.length; a++) {
        const v = args[a];
        if (!isRef(v)) {
          movabs(ARG_REG_MOVABS[a], v ?? 0);
          continue;
        }
        // The address of that call's result slot, then the result itself.
        const k = v.result - first;
        if (k < 0 || k >= index) throw new StasisError(`pid ${this.pid}: a batched call refers to the result of call ${v.result}, not an earlier one of its run (a bug in stasis)`);
        movabs(ARG_REG_MOVABS[a], at + k * 8);
        for (const b of ARG_REG_LOAD[a]) code[o++] = b;
      }
      op(0x0f, 0x05);
    };
    // Calls without references to earlier results (nearly all): the
    // template, then its eight imm64s as 16-bit stores (every instruction
    // has an even length, so they stay 2-byte aligned). Written by
    // movabs, ~20 µs a call in V8's interpreter; this way, a few.
    const tpl = template();
    const u16 = code.byteOffset % 2 === 0 ? new Uint16Array(code.buffer, code.byteOffset, code.length >> 1) : null;
    for (let k = 0; k < part.length; k++) {
      const c = part[k], args = c.args;
      if (u16 && o % 2 === 0 && !args.some(isRef)) {
        code.set(tpl, o);
        const w = o >> 1;
        putU64(u16, w + 1, c.nr);
        for (let a = 0; a < 6; a++) putU64(u16, w + 6 + 5 * a, (args[a] as number | bigint | undefined) ?? 0);
        putU64(u16, w + 37, at + k * 8);
        o += BATCH_CALL_BYTES;
        continue;
      }
      syscall(c.nr, args, k);
      movabs([0x48, 0xa3], at + k * 8); // mov [results + k*8], rax
    }
    if (!safe) {
      op(0xcc);
      return { code, at, done, end: area + o };
    }
    op(0xb8, 1, 0, 0, 0); // mov eax, 1
    movabs([0xa3], done); // mov [done], eax
    syscall(SYS_SELECT, [0, 0, 0, 0, timeout, 0], part.length);
    movabs(MOV_RAX, this.task.wayHome()); // mov rax, home
    op(0xff, 0xe0); // jmp rax
    writeU64(code, timeout - area, SAFE_BATCH_WAIT_S);
    return { code, at, done, end: area + o };
  }

  get pid(): number {
    return this.task.pid;
  }

  call(name: string, nr: number, args: Array<number | bigint> = [], where?: string): number {
    return this.task.call(name, nr, args, where);
  }

  /**
   * Map a private read-write scratch area at `hint` (or anywhere when 0);
   * with `batchSize`, an executable area for batched calls follows it, but
   * not in a target injected safely: code of ours there could not be
   * abandoned, so its calls go one by one.
   */
  mapScratch(size: number, hint = 0, batchSize = 0): void {
    if (this.task.injectsSafely) return this.mapScratchSafely(size, hint, batchSize);
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | (hint ? MAP_FIXED_NOREPLACE : 0);
    const prot = PROT_READ | PROT_WRITE | (batchSize ? PROT_EXEC : 0);
    this.scratch = this.call('mmap', SYS.mmap, [hint, size + batchSize, prot, flags, -1, 0], 'scratch area');
    this.scratchSize = size;
    this.batchArea = batchSize ? this.scratch + size : 0;
    this.batchSize = batchSize;
    this.used = 0;
  }

  unmapScratch(): void {
    if (!this.scratch) return;
    // A task that went home by itself unmapped it on its way (runSafely).
    if (!this.task.wentHome) this.call('munmap', SYS.munmap, [this.scratch, this.scratchSize + (this.batchArea || this.safeBatchArea ? this.batchSize : 0)], 'scratch area');
    this.scratch = 0;
    this.batchArea = 0;
    this.safeBatchArea = 0;
    const g = Gadget.existing(this.task.tgid);
    if (g) {
      g.setScratch(this.task.gadgetTask(), 0, 0);
      g.removeAll(this.task.gadgetTask());
    }
  }

  /**
   * In a target: the area's address is chosen here, in a gap of the
   * stopped process, and told to the gadget before the mmap runs, so a
   * stasis dying at any point leaves no mapping behind (the way home
   * unmaps it; the gap was free, so that munmap can only hit our area).
   */
  private mapScratchSafely(size: number, hint: number, batchSize: number): void {
    const whole = size + batchSize;
    const addr = hint || gapFor(this.task.tgid, whole);
    const g = Gadget.of(this.task.gadgetTask());
    g.setScratch(this.task.gadgetTask(), addr, whole);
    const map = (len: number, prot: number) => this.task.injectRaw(SYS.mmap, [addr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0]);
    let got = map(whole, PROT_READ | PROT_WRITE | (batchSize ? PROT_EXEC : 0));
    // No writable code in a process that denies it (prctl PR_SET_MDWE): its calls go one by one.
    if (batchSize && got === -BigInt(EACCES)) {
      got = map(size, PROT_READ | PROT_WRITE);
      batchSize = 0;
    }
    if (got !== BigInt(addr)) {
      g.setScratch(this.task.gadgetTask(), 0, 0);
      injectedResult(got, 'mmap', this.pid, 'scratch area');
      throw new StasisError(`pid ${this.pid}: the scratch area landed at 0x${got.toString(16)}, not 0x${addr.toString(16)}`);
    }
    this.scratch = addr;
    this.scratchSize = size;
    this.batchArea = 0;
    this.safeBatchArea = batchSize ? addr + size : 0;
    this.batchSize = batchSize;
    this.used = 0;
  }

  /** Bytes of the scratch area handed out since the last reset. */
  get scratchUsed(): number {
    return this.used;
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

/**
 * A free range of `size` bytes in a stopped process for the scratch area.
 * Not just below the stack: if stasis dies, the way home unmaps the area
 * while another thread may still be finishing an injected call that writes
 * there, and a fault just below the stack would grow the stack instead of
 * failing. Preferred: well above the highest mapping under the stack, a
 * range mmap(NULL) never hands out (it allocates below its base, under the
 * libraries), so nothing of the program can appear there meanwhile.
 */
function gapFor(pid: number, size: number): number {
  const ranges = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((l) => {
    const f = l.split(/\s+/);
    const [a, b] = f[0].split('-');
    return { start: parseInt(a, 16), end: parseInt(b, 16), name: f[5] ?? '' };
  }).filter((r) => r.start < 0x7fffffffffff).sort((x, y) => x.start - y.start);
  const stack = ranges.findIndex((r) => r.name === '[stack]');
  if (stack > 0) {
    const addr = ranges[stack - 1].end + 0x100000;
    if (ranges[stack].start - (addr + size) >= 0x10000000) return addr;
  }
  // Otherwise the highest gap not directly under the stack, a guard page on either side.
  for (let i = ranges.length - 1; i > 0; i--) {
    if (i === stack) continue;
    const lo = ranges[i - 1].end + 0x1000, hi = ranges[i].start - 0x1000;
    if (hi - lo >= size) return hi - size;
  }
  throw new StasisError(`pid ${pid}: no free address range of ${size} bytes for a scratch area`);
}
