// System calls injected into a target so that stasis may vanish (SIGKILL,
// OOM) at any instruction and the task still carries on exactly as it was.
//
// The code lives in the zero padding at the end of the task's own vDSO
// (written through /proc/PID/mem, which gives the process a private copy
// of that page with identical code): nothing is mapped for it, and no
// program ever executes those bytes. A block is
//
//   E:  syscall                  <- every injected call runs here
//       munmap(scratch, len)     <- only reached if stasis is gone:
//       rt_sigprocmask(SETMASK, &savedMask)
//       reload rdi rsi rdx r10 r8 r9 rcx r11 rax from the block's data
//       jmp [resume rip]
//
// so the injected call is followed by a way home. Injected calls run under
// PTRACE_SYSCALL with PTRACE_O_TRACESYSGOOD: the tracer waits at the
// syscall-entry and syscall-exit stops, which the kernel simply lets go of
// when the tracer dies (no SIGTRAP is delivered, unlike int3 or a single
// step). Only registers the `syscall` instruction and its arguments touch
// are ever changed; rsp, rflags, the other registers and the FPU never are.
//
// The way home resumes a task that was stopped inside a system call the way
// the kernel would have: restartable calls (-ERESTARTSYS, -ERESTARTNOINTR,
// -ERESTARTNOHAND) run again, -ERESTART_RESTARTBLOCK goes through
// restart_syscall (its restart block is untouched by our calls).
//
// Signals are blocked in the thread while it runs injected calls (they stay
// pending, are saved in the image and delivered after detach): a handler
// never runs in the middle of a checkpoint.
import fs from 'node:fs';
import { Regs, RegName, SYS, ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK, writeU64 } from '../sys/x86';
import { StasisError } from '../sys/errno';

/** Data slots of a block, qwords after its code. */
// The last three are never read by the code: rip, rax and orig_rax as the
// task was found, for a checkpoint that finds it still in the block after
// ours was killed (LeftBehind), since the resume registers lose what the
// kernel needs to restart a call through its restart block.
const SLOTS = ['mask', 'scratch', 'scratchLen', 'rdi', 'rsi', 'rdx', 'r10', 'r8', 'r9', 'rcx', 'r11', 'rax', 'rip', 'foundRip', 'foundRax', 'foundOrig'] as const;
type Slot = typeof SLOTS[number];
const RESTORED: Array<[Slot & RegName, number, boolean]> = [
  // register, number in ModRM reg field, needs REX.R
  ['rdi', 7, false], ['rsi', 6, false], ['rdx', 2, false], ['r10', 2, true], ['r8', 0, true],
  ['r9', 1, true], ['rcx', 1, false], ['r11', 3, true], ['rax', 0, false],
];

/** The code of one block; `dataAt` is the offset of its data from the block start. */
export function blockCode(dataAt: number): Buffer {
  const out: number[] = [];
  const slot = (s: Slot) => dataAt + SLOTS.indexOf(s) * 8;
  // disp32 of a rip-relative operand, counted from the end of the instruction
  const ripRel = (bytes: number[], s: Slot) => {
    const end = out.length + bytes.length + 4;
    const d = Buffer.alloc(4);
    d.writeInt32LE(slot(s) - end);
    out.push(...bytes, ...d);
  };
  const movImm = (bytes: number[], v: number) => {
    const d = Buffer.alloc(4);
    d.writeUInt32LE(v);
    out.push(...bytes, ...d);
  };
  const SYSCALL = [0x0f, 0x05];
  out.push(...SYSCALL);
  movImm([0xb8], SYS.munmap); // mov eax, munmap
  ripRel([0x48, 0x8b, 0x3d], 'scratch'); // mov rdi, [scratch]
  ripRel([0x48, 0x8b, 0x35], 'scratchLen'); // mov rsi, [scratchLen]
  out.push(...SYSCALL);
  movImm([0xb8], SYS.rt_sigprocmask); // mov eax, rt_sigprocmask
  movImm([0xbf], 2); // mov edi, SIG_SETMASK
  ripRel([0x48, 0x8d, 0x35], 'mask'); // lea rsi, [mask]
  movImm([0xba], 0); // mov edx, 0 (no flags touched, unlike xor)
  movImm([0x41, 0xba], 8); // mov r10d, 8
  out.push(...SYSCALL);
  for (const [s, reg, rexR] of RESTORED) ripRel([rexR ? 0x4c : 0x48, 0x8b, 0x05 | (reg << 3)], s);
  ripRel([0xff, 0x25], 'rip'); // jmp [rip]
  return Buffer.from(out);
}

interface Layout {
  CODE_LEN: number;
  DATA_AT: number;
  /** The code of a block as placed. */
  CODE: Buffer;
  BLOCK: number;
}
let layoutMemo: Layout | undefined;

/** Made on first use: a restart, which never injects through the gadget, does not pay for it. */
function layout(): Layout {
  if (layoutMemo) return layoutMemo;
  const CODE_LEN = blockCode(0).length;
  const DATA_AT = (CODE_LEN + 7) & ~7;
  return layoutMemo = { CODE_LEN, DATA_AT, CODE: blockCode(DATA_AT), BLOCK: (DATA_AT + SLOTS.length * 8 + 15) & ~15 };
}

/**
 * Registers that resume the task by themselves, as the kernel would have
 * resumed it from the stop it was found in: the syscall-restart decision
 * is made here, once, and orig_rax = -1 keeps the kernel out of it.
 */
export function resumeRegs(saved: Regs): Regs {
  const r = saved.clone();
  const orig = r.signed('orig_rax');
  const rax = r.signed('rax');
  if (orig >= 0n) {
    const rip = r.get('rip');
    if (rax === BigInt(-ERESTARTSYS) || rax === BigInt(-ERESTARTNOINTR) || rax === BigInt(-ERESTARTNOHAND)) {
      r.set('rax', orig);
      r.set('rip', rip - 2n);
    } else if (rax === BigInt(-ERESTART_RESTARTBLOCK)) {
      r.set('rax', SYS.restart_syscall);
      r.set('rip', rip - 2n);
    }
  }
  r.set('orig_rax', -1n);
  return r;
}

/** Where the vDSO ELF's own bytes end: past this the page is padding. */
function vdsoContentEnd(img: Buffer): number {
  if (img.length < 64 || img.readUInt32BE(0) !== 0x7f454c46) return img.length;
  let end = Number(img.readBigUInt64LE(0x28)) + img.readUInt16LE(0x3a) * img.readUInt16LE(0x3c);
  const phoff = Number(img.readBigUInt64LE(0x20));
  for (let i = 0; i < img.readUInt16LE(0x38); i++) {
    const p = phoff + i * 56;
    if (p + 56 > img.length) break;
    end = Math.max(end, Number(img.readBigUInt64LE(p + 8) + img.readBigUInt64LE(p + 32)));
  }
  return end;
}

export interface GadgetTask {
  pid: number;
  tgid: number;
  /** its process's vDSO, if known (read again from its maps if not) */
  vdso?: Range;
  memFd(): number;
  /** take the task's registers out of the gadget */
  disarm(): void;
}

export interface Range { start: number; end: number }

/** The process's vDSO, or null if it has none (throws if its maps cannot be read). */
export function vdsoOf(pid: number): Range | null {
  const line = fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((l) => l.endsWith(' [vdso]'));
  if (!line) return null;
  const [a, b] = line.split(' ')[0].split('-');
  return { start: parseInt(a, 16), end: parseInt(b, 16) };
}

/**
 * Whether a process has a vDSO to hold the injection code. One that
 * unmapped its vDSO is injected the old way (a breakpoint after each call):
 * a stasis killed while injecting into it can harm it (docs/state.md).
 */
export function hasVdso(pid: number): boolean {
  try {
    return vdsoOf(pid) !== null;
  } catch {
    return true; // gone or unreadable: the safe path reports it
  }
}

/**
 * Blocks placed at most: block 0 is the main thread's (its way home also
 * unmaps the scratch area); each other block serves one other thread at a
 * time, so that up to four threads may be in injected calls at once.
 */
const MAX_BLOCKS = 5;

/** How many blocks the padding at the end of a vDSO image holds (at most MAX_BLOCKS; two at least, or 0). */
function blocksIn(img: Buffer): number {
  const { BLOCK } = layout();
  const n = Math.min(MAX_BLOCKS, Math.floor((img.length - vdsoContentEnd(img)) / BLOCK));
  return n >= 2 ? n : 0;
}

/** Whether `pad` (the padding `n` blocks take) holds our code in each: left by a stasis that was killed. */
function holdsOurBlocks(pad: Buffer, n: number): boolean {
  const { CODE_LEN, CODE, BLOCK } = layout();
  for (let b = 0; b < n; b++) if (!pad.subarray(b * BLOCK, b * BLOCK + CODE_LEN).equals(CODE)) return false;
  return true;
}

/** Where the way home of a block takes a task, read back from the block. */
export interface WayHome {
  /** its registers as the stasis that armed the block found them (the kernel's view: in a call, maybe to restart) */
  regs: Array<[RegName, bigint]>;
  mask: bigint;
  /** the scratch area it unmaps (main thread's block) */
  scratch?: { addr: number; len: number };
}

/**
 * The blocks a killed stasis left in a process's vDSO padding, read at the
 * next freeze. A task may still be in their code then: in a batch's wait,
 * in an injected call, on its way home. Its registers there are not its
 * own, so the freeze finishes that way home for it (Tracee.leaveAbandoned).
 */
export class LeftBehind {
  private constructor(private readonly base: number, private readonly data: Buffer[]) {}

  /** The blocks in the padding of `vdso`, or null if there are none. */
  static read(vdso: Range, memFd: number): LeftBehind | null {
    const { BLOCK, DATA_AT } = layout();
    const img = Buffer.alloc(vdso.end - vdso.start);
    try {
      if (fs.readSync(memFd, img, 0, img.length, vdso.start) !== img.length) return null;
    } catch {
      return null; // gone: the next request says so
    }
    const n = blocksIn(img);
    const pad = img.subarray(img.length - n * BLOCK);
    if (!n || !holdsOurBlocks(pad, n)) return null;
    const data = Array.from({ length: n }, (_, b) => Buffer.from(pad.subarray(b * BLOCK + DATA_AT, b * BLOCK + DATA_AT + SLOTS.length * 8)));
    return new LeftBehind(vdso.end - n * BLOCK, data);
  }

  /**
   * Where a task stopped at `rip` goes home to, if that is in the code of
   * a block it may hold (block 0 for the main thread, which may also be in
   * the scratch area; another for any other thread).
   */
  wayHome(t: { pid: number; tgid: number }, rip: number): WayHome | null {
    const { BLOCK, CODE_LEN } = layout();
    const main = t.pid === t.tgid;
    const b = main ? 0 : this.data.findIndex((_, k) => k > 0 && rip >= this.base + k * BLOCK && rip < this.base + k * BLOCK + CODE_LEN);
    if (b < 0) return null;
    const slot = (s: Slot) => this.data[b].readBigUInt64LE(SLOTS.indexOf(s) * 8);
    const start = this.base + b * BLOCK;
    const scratch = Number(slot('scratch')), len = Number(slot('scratchLen'));
    const inScratch = main && len > 0 && rip >= scratch && rip < scratch + len;
    if (!inScratch && !(rip >= start && rip < start + CODE_LEN)) return null;
    return {
      regs: [...RESTORED.map(([s]): [RegName, bigint] => [s, slot(s)]), ['rip', slot('foundRip')], ['rax', slot('foundRax')], ['orig_rax', slot('foundOrig')]],
      mask: slot('mask'),
      scratch: main && len > 0 ? { addr: scratch, len } : undefined,
    };
  }
}

/**
 * The injection blocks of one process. Block 0 belongs to the main thread
 * (its way home also unmaps the scratch area); each other block to one
 * other thread at a time, the one armed longest ago giving its block up
 * (disarmed, so stopped) when a thread needs one and none is free.
 */
export class Gadget {
  readonly tgid: number;
  private readonly base: number;
  private readonly original: Buffer;
  private scratch = 0;
  private scratchLen = 0;
  /** the task each block currently points home for */
  private readonly holders: Array<GadgetTask | undefined>;
  /** when each block was last armed (a count), to give up the oldest */
  private readonly armedAt: number[];
  private arms = 0;

  private constructor(tgid: number, base: number, blocks: number) {
    const { BLOCK } = layout();
    this.tgid = tgid;
    this.base = base;
    this.original = Buffer.alloc(blocks * BLOCK);
    this.holders = new Array<GadgetTask | undefined>(blocks).fill(undefined);
    this.armedAt = new Array<number>(blocks).fill(0);
  }

  /** How many threads other than the main one may be in injected calls at once. */
  get otherBlocks(): number {
    return this.holders.length - 1;
  }

  /** The block `t` holds (the main thread: always 0). */
  private blockOf(t: { pid: number; tgid: number }): number {
    if (t.pid === t.tgid) return 0;
    const b = this.holders.findIndex((h, k) => k > 0 && h?.pid === t.pid);
    if (b < 0) throw new StasisError(`pid ${t.tgid} thread ${t.pid}: holds no injection block (a bug in stasis)`);
    return b;
  }

  private static readonly byProcess = new Map<number, Gadget>();

  /** The process's gadget, placed on first use. */
  static of(t: GadgetTask): Gadget {
    const { BLOCK, CODE } = layout();
    let g = Gadget.byProcess.get(t.tgid);
    if (g) return g;
    const vdso = t.vdso ?? vdsoOf(t.tgid);
    if (!vdso) throw new StasisError(`pid ${t.tgid} has no vDSO: stasis runs system calls in a target through the padding of its vDSO; not supported`);
    const img = Buffer.alloc(vdso.end - vdso.start);
    fs.readSync(t.memFd(), img, 0, img.length, vdso.start);
    const n = blocksIn(img);
    const base = img.length - n * BLOCK;
    const pad = img.subarray(base);
    // A stasis killed mid-checkpoint leaves its blocks behind: they are ours to reuse and clean.
    const leftover = n > 0 && holdsOurBlocks(pad, n);
    if (!n || (!leftover && pad.some((x) => x !== 0))) {
      throw new StasisError(`pid ${t.tgid}: its vDSO has no ${2 * BLOCK} bytes of free padding for the injection code; not supported`);
    }
    g = new Gadget(t.tgid, vdso.start + base, n);
    const all = Buffer.alloc(n * BLOCK);
    for (let b = 0; b < n; b++) CODE.copy(all, b * BLOCK);
    fs.writeSync(t.memFd(), all, 0, all.length, g.base);
    Gadget.byProcess.set(t.tgid, g);
    return g;
  }

  /** The process is gone (or being killed): nothing to put back. */
  static forget(tgid: number): void {
    Gadget.byProcess.delete(tgid);
  }

  static existing(tgid: number): Gadget | undefined {
    return Gadget.byProcess.get(tgid);
  }

  /** Entry point (the syscall instruction) of a task's block. */
  entry(t: GadgetTask): number {
    const { BLOCK } = layout();
    return this.base + this.blockOf(t) * BLOCK;
  }


  /**
   * Each run of adjacent slots given is one write: arm's 13 slots were 13
   * writes into the task's memory, and scratch and its length, written
   * apart, could be left half-changed by a stasis dying between the two.
   */
  private writeSlots(t: GadgetTask, values: Partial<Record<Slot, bigint>>): void {
    const { BLOCK, DATA_AT } = layout();
    const at = this.base + this.blockOf(t) * BLOCK + DATA_AT;
    const given = SLOTS.map((s) => values[s]);
    for (let i = 0; i < given.length;) {
      if (given[i] === undefined) {
        i++;
        continue;
      }
      let j = i;
      while (j < given.length && given[j] !== undefined) j++;
      const b = Buffer.alloc((j - i) * 8);
      for (let k = i; k < j; k++) writeU64(b, (k - i) * 8, given[k]!);
      fs.writeSync(t.memFd(), b, 0, b.length, at + i * 8);
      i = j;
    }
  }

  /** Point a task's block home: its resume registers (`home`, made from `found`) and its own signal mask. */
  arm(t: GadgetTask, home: Regs, found: Regs, mask: bigint): void {
    let b = t.pid === t.tgid ? 0 : this.holders.findIndex((h, k) => k > 0 && h?.pid === t.pid);
    if (b < 0) b = this.holders.findIndex((h, k) => k > 0 && !h);
    if (b < 0) b = this.armedAt.reduce((old, at, k) => (k > 0 && at < this.armedAt[old] ? k : old), 1);
    const other = this.holders[b];
    if (other && other.pid !== t.pid) other.disarm();
    this.holders[b] = t;
    this.armedAt[b] = ++this.arms;
    const v: Partial<Record<Slot, bigint>> = { mask };
    for (const [s] of RESTORED) v[s] = home.get(s);
    v.rip = home.get('rip');
    Object.assign(v, { foundRip: found.get('rip'), foundRax: found.get('rax'), foundOrig: found.get('orig_rax') });
    if (b === 0) Object.assign(v, { scratch: BigInt(this.scratch), scratchLen: BigInt(this.scratchLen) });
    this.writeSlots(t, v);
  }

  /**
   * The scratch area to unmap on the way home (main thread's block). Set it
   * before the mmap that creates it runs, cleared after the munmap: an
   * area that does not exist makes that munmap fail harmlessly.
   */
  setScratch(main: GadgetTask, addr: number, len: number): void {
    this.scratch = addr;
    this.scratchLen = len;
    this.writeSlots(main, { scratch: BigInt(addr), scratchLen: BigInt(len) });
  }

  /** The task no longer points into its block. */
  release(t: GadgetTask): void {
    const b = this.holders.findIndex((h) => h?.pid === t.pid);
    if (b >= 0) this.holders[b] = undefined;
  }

  /** Every task out of the gadget, then the padding put back. */
  removeAll(t: GadgetTask): void {
    for (const h of this.holders) h?.disarm();
    // A task that went home by itself keeps its block (it may be in it still).
    if (!this.holders.some(Boolean)) this.remove(t);
  }

  /** After a task detached: the padding goes back once no task uses it. */
  removeIfIdle(t: GadgetTask): void {
    this.release(t);
    if (!this.holders.some(Boolean)) this.remove(t);
  }

  /** Put the padding back once no task's registers point into it. */
  private remove(t: GadgetTask): void {
    Gadget.byProcess.delete(this.tgid);
    try {
      fs.writeSync(t.memFd(), this.original, 0, this.original.length, this.base);
    } catch { /* the process is gone */ }
  }
}
