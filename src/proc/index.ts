// Parsers for /proc/<pid>/* files plus thin synchronous readers.
// Parsers are pure (text in, typed data out) so they can be unit-tested
// against captured fixtures; readers only do the I/O.

import * as fs from "fs";
import { StringDecoder } from "string_decoder";

export type Pid = number | "self";

export const PAGE_SIZE = 4096;
/** RLIM_INFINITY as reported by the kernel ("unlimited"). */
export const RLIM_INFINITY = 0xffffffffffffffffn;

function toText(input: string | Buffer): string {
  return typeof input === "string" ? input : input.toString("utf8");
}

function procPath(pid: Pid, rest: string): string {
  return `/proc/${pid}/${rest}`;
}

function isEnoent(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  // ESRCH shows up when the task dies between readdir and read.
  return code === "ENOENT" || code === "ESRCH";
}

// ---------------------------------------------------------------- maps/smaps

export interface Vma {
  start: number;
  end: number;
  prot: { read: boolean; write: boolean; exec: boolean };
  /** 's' (shared) vs 'p' (private) in the perms column. */
  shared: boolean;
  offset: number;
  /** "major:minor" in hex, exactly as printed in maps, e.g. "fd:01". */
  dev: string;
  inode: number;
  /** "" for anonymous; may be "[heap]", "[stack]", "[vdso]", a file path, and may end in " (deleted)". */
  path: string;
  deleted: boolean;
  /** Two-letter VmFlags mnemonics from smaps; empty when parsed from maps. */
  vmFlags: string[];
  /** smaps "ProtectionKey:" (CPUs with pkeys only); 0 when absent. */
  protectionKey?: number;
}

// start-end perms offset dev inode [path]. The path is whatever follows the
// column padding; it may contain spaces (and ") (" etc.), so it is taken as
// the rest of the line rather than split.
const MAPS_LINE =
  /^([0-9a-f]+)-([0-9a-f]+)\s+([r-][w-][x-][sp])\s+([0-9a-f]+)\s+([0-9a-f]+:[0-9a-f]+)\s+(\d+)(?:\s+(.*))?$/;

const DELETED_SUFFIX = " (deleted)";
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Parse one maps header line; null if the line is not a header. VMAs ending
 * beyond 2^53 yield "skip": on x86-64 that is only [vsyscall]
 * (0xffffffffff600000), a fixed kernel-provided page that is neither dumped
 * nor recreated, so dropping it keeps every address a plain JS number.
 */
function parseMapsLine(line: string): Vma | null | "skip" {
  const m = MAPS_LINE.exec(line);
  if (!m) return null;
  const start = BigInt("0x" + m[1]);
  const end = BigInt("0x" + m[2]);
  if (end > MAX_SAFE) return "skip";
  const perms = m[3];
  const path = m[7] ?? "";
  return {
    start: Number(start),
    end: Number(end),
    prot: { read: perms[0] === "r", write: perms[1] === "w", exec: perms[2] === "x" },
    shared: perms[3] === "s",
    offset: Number(BigInt("0x" + m[4])),
    dev: m[5],
    inode: Number(m[6]),
    path,
    deleted: path.endsWith(DELETED_SUFFIX),
    vmFlags: [],
  };
}

function splitLines(text: string): string[] {
  const lines = text.split("\n");
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

export function parseMaps(input: string | Buffer): Vma[] {
  const out: Vma[] = [];
  for (const line of splitLines(toText(input))) {
    if (line === "") continue;
    const v = parseMapsLine(line);
    if (v === null) throw new Error(`unparseable maps line: ${JSON.stringify(line)}`);
    if (v !== "skip") out.push(v);
  }
  return out;
}

export function parseSmaps(input: string | Buffer): Vma[] {
  const p = new SmapsParser();
  p.lines(toText(input));
  return p.out;
}

/** smaps, fed in pieces of whole lines: only headers, VmFlags and ProtectionKey are kept. */
class SmapsParser {
  readonly out: Vma[] = [];
  // Non-null while inside a VMA block we keep; "skip" while inside a dropped one.
  private cur: Vma | "skip" | null = null;

  lines(text: string): void {
    for (const line of splitLines(text)) {
      if (line === "") continue;
      // Key lines ("Rss:   4 kB") never match the header pattern: keys have no '-'.
      const v = parseMapsLine(line);
      if (v !== null) {
        this.cur = v;
        if (v !== "skip") this.out.push(v);
        continue;
      }
      const cur = this.cur;
      if (cur === null) throw new Error(`smaps data before first header: ${JSON.stringify(line)}`);
      if (cur !== "skip" && line.startsWith("VmFlags:")) {
        cur.vmFlags = line.slice("VmFlags:".length).trim().split(/\s+/).filter((s) => s !== "");
      } else if (cur !== "skip" && line.startsWith("ProtectionKey:")) {
        cur.protectionKey = Number(line.slice("ProtectionKey:".length).trim());
      }
    }
  }
}

export function readMaps(pid: Pid): Vma[] {
  return parseMaps(fs.readFileSync(procPath(pid, "maps")));
}

/**
 * VMAs with VmFlags, read from /proc/pid/smaps a megabyte at a time: the
 * whole text of 60,000 VMAs is some 45 MB, of which a few fields are kept.
 */
export function readVmas(pid: Pid): Vma[] {
  const fd = fs.openSync(procPath(pid, "smaps"), "r");
  try {
    const parser = new SmapsParser();
    const decoder = new StringDecoder("utf8");
    const buf = Buffer.allocUnsafe(1 << 20);
    let carry = "";
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      const text = carry + decoder.write(buf.subarray(0, n));
      const cut = text.lastIndexOf("\n") + 1;
      parser.lines(text.slice(0, cut));
      carry = text.slice(cut);
    }
    parser.lines(carry + decoder.end());
    return parser.out;
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------- stat

export interface Stat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** device number of the controlling terminal (0: none), and its foreground group (-1: none) */
  ttyNr: number;
  tpgid: number;
  flags: number;
  /** nice value (-20..19), also kept for real-time tasks */
  nice: number;
  numThreads: number;
  rtPriority: number;
  /** SCHED_* policy (without SCHED_RESET_ON_FORK) */
  policy: number;
  /** Clock ticks since boot. */
  startTime: number;
  startCode: number;
  endCode: number;
  startStack: number;
  startData: number;
  endData: number;
  startBrk: number;
  argStart: number;
  argEnd: number;
  envStart: number;
  envEnd: number;
  exitCode: number;
}

export function parseStat(input: string | Buffer): Stat {
  const text = toText(input);
  // comm is raw (unescaped) and may contain spaces, '(' and ')', so it spans
  // from the first '(' to the LAST ')'.
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) throw new Error("unparseable stat: no (comm)");
  const pid = Number(text.slice(0, open).trim());
  const comm = text.slice(open + 1, close);
  const rest = text.slice(close + 1).trim().split(/\s+/);
  // rest[0] is field 3 (state) in man 5 proc numbering.
  const field = (n: number): number => {
    const s = rest[n - 3];
    // Fields appended by newer kernels are absent on older ones.
    return s === undefined ? 0 : Number(s);
  };
  return {
    pid,
    comm,
    state: rest[0],
    ppid: field(4),
    pgrp: field(5),
    session: field(6),
    ttyNr: field(7),
    tpgid: field(8),
    flags: field(9),
    nice: field(19),
    numThreads: field(20),
    rtPriority: field(40),
    policy: field(41),
    startTime: field(22),
    startCode: field(26),
    endCode: field(27),
    startStack: field(28),
    startData: field(45),
    endData: field(46),
    startBrk: field(47),
    argStart: field(48),
    argEnd: field(49),
    envStart: field(50),
    envEnd: field(51),
    exitCode: field(52),
  };
}

export function readStat(pid: Pid): Stat {
  return parseStat(fs.readFileSync(procPath(pid, "stat")));
}

// ---------------------------------------------------------------- status

export interface Status {
  /** As printed: the kernel escapes '\n', '\t', '\\' etc. here (stat's comm is raw). */
  name: string;
  umask: number;
  /** Single state letter, e.g. "S" (the "(sleeping)" description is dropped). */
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  uid: [number, number, number, number];
  gid: [number, number, number, number];
  groups: number[];
  threads: number;
  sigQ: { queued: number; limit: number };
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: number;
  seccomp: number;
  nsPid: number[];
  raw: Record<string, string>;
}

function parseKeyValues(text: string): Record<string, string> {
  const raw: Record<string, string> = {};
  for (const line of splitLines(text)) {
    const i = line.indexOf(":");
    if (i <= 0) continue;
    const key = line.slice(0, i).trim();
    if (!(key in raw)) raw[key] = line.slice(i + 1).trim();
  }
  return raw;
}

function ints(s: string | undefined): number[] {
  if (s === undefined || s.trim() === "") return [];
  return s.trim().split(/\s+/).map(Number);
}

function quad(s: string | undefined, key: string): [number, number, number, number] {
  const v = ints(s);
  if (v.length !== 4) throw new Error(`status: bad ${key} line: ${JSON.stringify(s)}`);
  return [v[0], v[1], v[2], v[3]];
}

export function parseStatus(input: string | Buffer): Status {
  const raw = parseKeyValues(toText(input));
  // Fields a checkpoint cannot do without: fail loudly instead of guessing.
  const need = (key: string): string => {
    const v = raw[key];
    if (v === undefined) throw new Error(`status: missing ${key}`);
    return v;
  };
  const num = (key: string): number => Number(raw[key] ?? 0);
  const hex = (key: string): bigint => (raw[key] === undefined ? 0n : parseSigset(raw[key]));
  const [queued, limit] = (raw["SigQ"] ?? "0/0").split("/").map(Number);
  return {
    name: need("Name"),
    umask: parseInt(need("Umask"), 8),
    state: need("State").charAt(0),
    tgid: Number(need("Tgid")),
    pid: Number(need("Pid")),
    ppid: Number(need("PPid")),
    tracerPid: num("TracerPid"),
    uid: quad(need("Uid"), "Uid"),
    gid: quad(need("Gid"), "Gid"),
    groups: ints(raw["Groups"]),
    threads: num("Threads"),
    sigQ: { queued, limit },
    sigPnd: hex("SigPnd"),
    shdPnd: hex("ShdPnd"),
    sigBlk: hex("SigBlk"),
    sigIgn: hex("SigIgn"),
    sigCgt: hex("SigCgt"),
    capInh: hex("CapInh"),
    capPrm: hex("CapPrm"),
    capEff: hex("CapEff"),
    capBnd: hex("CapBnd"),
    capAmb: hex("CapAmb"),
    noNewPrivs: num("NoNewPrivs"),
    seccomp: num("Seccomp"),
    nsPid: ints(raw["NSpid"]),
    raw,
  };
}

export function readStatus(pid: Pid): Status {
  return parseStatus(fs.readFileSync(procPath(pid, "status")));
}

// ---------------------------------------------------------------- limits

export interface Limit {
  name: string;
  resource: number;
  soft: bigint;
  hard: bigint;
}

// Names as printed by fs/proc/base.c, mapped to RLIMIT_* numbers.
const LIMIT_NAMES: Record<string, number> = {
  "Max cpu time": 0,
  "Max file size": 1,
  "Max data size": 2,
  "Max stack size": 3,
  "Max core file size": 4,
  "Max resident set": 5,
  "Max processes": 6,
  "Max open files": 7,
  "Max locked memory": 8,
  "Max address space": 9,
  "Max file locks": 10,
  "Max pending signals": 11,
  "Max msgqueue size": 12,
  "Max nice priority": 13,
  "Max realtime priority": 14,
  "Max realtime timeout": 15,
};

// Matched from the value columns rather than fixed offsets so that column
// width changes don't break parsing; the units column may be empty.
const LIMIT_LINE = /^(.*?)\s+(unlimited|\d+)\s+(unlimited|\d+)(?:\s+\S+)?\s*$/;

function limitValue(s: string): bigint {
  return s === "unlimited" ? RLIM_INFINITY : BigInt(s);
}

/** Rows with names we don't know are skipped (they have no RLIMIT_* number to restore with). */
export function parseLimits(input: string | Buffer): Limit[] {
  const out: Limit[] = [];
  for (const line of splitLines(toText(input))) {
    if (line.startsWith("Limit ")) continue; // header
    const m = LIMIT_LINE.exec(line);
    if (!m) continue;
    const resource = LIMIT_NAMES[m[1]];
    if (resource === undefined) continue;
    out.push({ name: m[1], resource, soft: limitValue(m[2]), hard: limitValue(m[3]) });
  }
  return out;
}

export function readLimits(pid: Pid): Limit[] {
  return parseLimits(fs.readFileSync(procPath(pid, "limits")));
}

// ---------------------------------------------------------------- fdinfo

export interface Fdinfo {
  pos: number;
  /** open(2) flags; printed in octal by the kernel. */
  flags: number;
  mntId: number;
  /** Absent on kernels before 5.14. */
  ino?: number;
  /** First value per key; keys are the text before the first ':'. */
  raw: Record<string, string>;
  /** All non-empty lines, since some keys (epoll "tfd", inotify) repeat. */
  lines: string[];
}

export function parseFdinfo(input: string | Buffer): Fdinfo {
  const text = toText(input);
  const raw = parseKeyValues(text);
  const res: Fdinfo = {
    pos: Number(raw["pos"] ?? 0),
    flags: parseInt(raw["flags"] ?? "0", 8),
    mntId: Number(raw["mnt_id"] ?? 0),
    raw,
    lines: splitLines(text).filter((l) => l !== ""),
  };
  if (raw["ino"] !== undefined) res.ino = Number(raw["ino"]);
  return res;
}

export function readFdinfo(pid: Pid, fd: number): Fdinfo {
  return parseFdinfo(fs.readFileSync(procPath(pid, `fdinfo/${fd}`)));
}

// ---------------------------------------------------------------- auxv

export interface AuxvEntry {
  type: bigint;
  value: bigint;
}

/** Little-endian u64 (type, value) pairs up to and including AT_NULL. */
export function parseAuxv(buf: Buffer): AuxvEntry[] {
  const out: AuxvEntry[] = [];
  for (let off = 0; off + 16 <= buf.length; off += 16) {
    const type = buf.readBigUInt64LE(off);
    out.push({ type, value: buf.readBigUInt64LE(off + 8) });
    if (type === 0n) break;
  }
  return out;
}

export function readAuxv(pid: Pid): Buffer {
  return fs.readFileSync(procPath(pid, "auxv"));
}

// ---------------------------------------------------------------- fds, tasks

export interface FdEntry {
  fd: number;
  target: string;
}

export function listFds(pid: Pid): FdEntry[] {
  const dir = procPath(pid, "fd");
  const out: FdEntry[] = [];
  for (const name of fs.readdirSync(dir)) {
    try {
      out.push({ fd: Number(name), target: fs.readlinkSync(`${dir}/${name}`) });
    } catch (e) {
      // The fd was closed after readdir (e.g. the readdir's own dir fd when pid is us).
      if (!isEnoent(e)) throw e;
    }
  }
  return out.sort((a, b) => a.fd - b.fd);
}

function numericEntries(dir: string): number[] {
  return fs
    .readdirSync(dir)
    .filter((n) => /^\d+$/.test(n))
    .map(Number)
    .sort((a, b) => a - b);
}

export function listThreads(pid: Pid): number[] {
  return numericEntries(procPath(pid, "task"));
}

/** Needs CONFIG_PROC_CHILDREN. Children are listed per creating thread, hence the union. */
export function listChildren(pid: Pid): number[] {
  const kids = new Set<number>();
  for (const tid of listThreads(pid)) {
    let text: string;
    try {
      text = fs.readFileSync(procPath(pid, `task/${tid}/children`), "utf8");
    } catch (e) {
      if (isEnoent(e)) continue; // thread exited meanwhile
      throw e;
    }
    for (const c of ints(text)) kids.add(c);
  }
  return [...kids].sort((a, b) => a - b);
}

// ---------------------------------------------------------------- signals

export function parseSigset(hex: string): bigint {
  const s = hex.trim();
  if (!/^[0-9a-fA-F]+$/.test(s)) throw new Error(`bad sigset: ${JSON.stringify(hex)}`);
  return BigInt("0x" + s);
}

/** Bit n-1 set => signal n. */
export function sigsetToList(set: bigint): number[] {
  const out: number[] = [];
  for (let n = 1; set >> BigInt(n - 1) !== 0n; n++) {
    if ((set >> BigInt(n - 1)) & 1n) out.push(n);
  }
  return out;
}

// ---------------------------------------------------------------- pagemap

export interface PagemapEntry {
  present: boolean;
  swapped: boolean;
  /** Bit 61: file-backed page or shared anonymous page. */
  file: boolean;
  /** Bit 56: page is mapped exclusively by this process. */
  exclusive: boolean;
  /** Bit 55: soft-dirty (useful for incremental dumps). */
  softDirty: boolean;
  /** Bits 0-54 when present (reads as 0 without CAP_SYS_ADMIN); 0 otherwise. */
  pfn: number;
}

export function parsePagemapEntry(v: bigint): PagemapEntry {
  const present = ((v >> 63n) & 1n) === 1n;
  return {
    present,
    swapped: ((v >> 62n) & 1n) === 1n,
    file: ((v >> 61n) & 1n) === 1n,
    exclusive: ((v >> 56n) & 1n) === 1n,
    softDirty: ((v >> 55n) & 1n) === 1n,
    // For swapped pages these bits hold swap type/offset, not a PFN.
    pfn: present ? Number(v & ((1n << 55n) - 1n)) : 0,
  };
}

// One read(2) is capped by the kernel at 0x7ffff000 bytes.
const MAX_READ = 0x7ffff000;

/** `use` given the pagemap of `pid` open (one open for all of a process's VMAs). */
export function withPagemap<T>(pid: Pid, use: (fd: number) => T): T {
  const fd = fs.openSync(procPath(pid, "pagemap"), "r");
  try {
    return use(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** One u64 per page of [start, end); both must be page aligned. From `fd` if given (withPagemap). */
export function readPagemap(pid: Pid, start: number, end: number, fd?: number): BigUint64Array {
  if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || end < start) {
    throw new RangeError(`readPagemap: bad range ${start.toString(16)}-${end.toString(16)}`);
  }
  const count = (end - start) / PAGE_SIZE;
  const entries = new BigUint64Array(count);
  if (count === 0) return entries;
  // View the typed array's own memory so no copy is needed; x86-64 is
  // little-endian like the kernel's u64s.
  const buf = Buffer.from(entries.buffer, entries.byteOffset, entries.byteLength);
  const basePos = (start / PAGE_SIZE) * 8;
  const read = (from: number) => {
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(from, buf, done, Math.min(buf.length - done, MAX_READ), basePos + done);
      if (n === 0) throw new Error(`readPagemap: unexpected EOF at ${basePos + done}`);
      done += n;
    }
  };
  if (fd !== undefined) read(fd);
  else withPagemap(pid, read);
  return entries;
}

/**
 * Every fd of every process outside `tree`, with what its link names:
 * how a checkpoint finds an object the tree shares with the outside.
 * Processes and fds that vanish meanwhile are skipped.
 */
export function* outsideFdLinks(tree: Set<number>): Generator<{ pid: number; fd: number; link: string }> {
  for (const d of fs.readdirSync("/proc")) {
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
      yield { pid: Number(d), fd: Number(fd), link };
    }
  }
}
