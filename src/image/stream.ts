// The image stream: a header, then typed, length-prefixed, checksummed
// records, written and read strictly in order (no seeking), so an image can
// go through a pipe. docs/image-format.md documents the layout.
import fs from 'node:fs';
import { ImageError, StasisError } from '../sys/errno';
import { crc32c, crc32cMany } from './crc32c';
import { writevAsync, sleepSync } from '../sys/libc';
import type { EndRecord, PageRun } from './schema';
import { checkValue } from './record-check';

export type { PageRun };

/**
 * The image schema, for readers only: building its zod objects is a good
 * part of a command's start-up, and a checkpoint only writes.
 */
function schema(): typeof import('./schema') {
  return require('./schema') as typeof import('./schema');
}

export const MAGIC = Buffer.from('STASIS\0\n', 'latin1');
export const FORMAT_VERSION = 2;
/**
 * Version 1 images (the first landing) lack state that version 2 saves
 * (locks, timers, queued signals, per-thread capabilities and scheduling,
 * prctl state, cgroups, VMA advice...): no converter can supply what was
 * never read, so they are refused with what to do.
 */
const UNCONVERTIBLE_BELOW = 2;
export const HEADER_SIZE = 16;
export const RECORD_HEADER_SIZE = 24;
/** Payloads this large have their checksums taken together, after the End record. */
const CHECK_LATER = 1 << 20;
/** Largest payload a reader accepts: guards against a corrupt length. */
export const MAX_RECORD = 1 << 30;

export enum RecordType {
  /** JSON: the process (see schema.ts ImageProcess) */
  Process = 1,
  /** binary: runs of page contents of one process (addresses + raw bytes) */
  Pages = 2,
  /** JSON: a zombie process (see schema.ts ImageZombie) */
  Zombie = 3,
  /** JSON: pipes and FIFOs with their bytes in flight (ImagePipe[]) */
  Pipes = 4,
  /** JSON: memfd files with their contents (ImageMemfd[]) */
  Memfds = 5,
  /** JSON: objects of the tree that fds of several processes share, one table per kind (ObjectTables) */
  Objects = 6,
  /** JSON: end marker with counts; its absence means a truncated image */
  End = 0x7fffffff,
}

export function recordTypeName(t: number): string {
  return RecordType[t] ?? `unknown(${t})`;
}

/** What a failed image write means for the user. */
export function writeHint(code: string | undefined): string {
  if (code === 'ENOSPC' || code === 'EDQUOT') return ' (the disk is full: free space or write the image elsewhere)';
  if (code === 'EIO') return ' (the device reported an I/O error: check it, or write the image elsewhere)';
  if (code === 'EPIPE') return ' (the reader of the image went away)';
  return '';
}

function writeAll(fd: number, buf: Buffer, dest: string): void {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        // A non-blocking pipe is full: give the reader a moment.
        sleepSync(1);
        continue;
      }
      throw new StasisError(`writing the image${dest}: ${code ?? (e as Error).message}${writeHint(code)}`);
    }
  }
}

export class ImageWriter {
  private readonly fd: number;
  /** " to FILE" for error messages, when the image goes to a named file */
  private readonly dest: string;
  records = 0;
  bytes = 0;

  constructor(fd: number, file?: string) {
    this.fd = fd;
    this.dest = file === undefined ? '' : ` to ${file}`;
    const h = Buffer.alloc(HEADER_SIZE);
    MAGIC.copy(h, 0);
    h.writeUInt32LE(FORMAT_VERSION, 8);
    h.writeUInt32LE(crc32c(h.subarray(0, 12)), 12);
    this.put(h);
  }

  private put(b: Buffer): void {
    writeAll(this.fd, b, this.dest);
    this.bytes += b.length;
  }

  /** One record; the payload may be given in parts (no concatenation). */
  record(type: RecordType, parts: Buffer[]): void {
    let crc = 0;
    for (const p of parts) crc = crc32c(p, crc);
    this.put(this.header(type, parts, crc));
    for (const p of parts) this.put(p);
    this.records++;
  }

  /**
   * The same with the write on a worker thread, for pipelining: the
   * checksum is taken here (CRC-32C runs at several GB/s), the header and
   * parts go out as one writev once `after` (the record before) is written.
   * The caller must not touch `parts` until the returned promise settles.
   */
  recordAsync(type: RecordType, parts: Buffer[], after: Promise<void> = Promise.resolve()): Promise<void> {
    let crc = 0;
    for (const p of parts) crc = crc32c(p, crc);
    const all = [this.header(type, parts, crc), ...parts];
    this.records++;
    return after.then(async () => {
      const total = all.reduce((n, b) => n + b.length, 0);
      const n = await writevAsync(this.fd, all);
      if (n < total) {
        // Short or failed (a full pipe, an error): finish here, where
        // errors can be named.
        writeAll(this.fd, Buffer.concat(all).subarray(Math.max(n, 0)), this.dest);
      }
      this.bytes += total;
    });
  }

  private header(type: RecordType, parts: Buffer[], crc: number): Buffer {
    const len = parts.reduce((n, p) => n + p.length, 0);
    const h = Buffer.alloc(RECORD_HEADER_SIZE);
    h.writeUInt32LE(type, 0);
    h.writeUInt32LE(0, 4);
    h.writeBigUInt64LE(BigInt(len), 8);
    h.writeUInt32LE(crc, 16);
    h.writeUInt32LE(crc32c(h.subarray(0, 20)), 20);
    return h;
  }

  json(type: RecordType, value: unknown): void {
    this.record(type, [Buffer.from(JSON.stringify(value), 'utf8')]);
  }

  /** Close the stream: the End record lets a reader prove it saw everything. */
  end(extra: Record<string, unknown> = {}): void {
    this.json(RecordType.End, { records: this.records, ...extra });
  }
}

export interface ImageRecord {
  type: number;
  offset: number;
  payload: Buffer;
}

/** Where records come from: n bytes at a time, strictly in order. */
interface Source {
  offset: number;
  /** exactly n bytes, null at a clean end, an ImageError when cut short */
  read(n: number): Buffer | null;
}

/** An image already in memory (a mapped file): records are views, not copies. */
class BufferSource implements Source {
  offset = 0;
  constructor(private readonly buf: Buffer, private readonly source: string) {}
  read(n: number): Buffer | null {
    const left = this.buf.length - this.offset;
    if (left === 0) return null;
    if (left < n) throw new ImageError(`${this.source} is truncated: needed ${n} bytes at byte ${this.offset}, the stream ended after ${left}`);
    const b = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return b;
  }
}

/** Reads exactly n bytes or reports how far the stream got. */
class StreamSource implements Source {
  private readonly fd: number;
  offset = 0;
  constructor(fd: number, private readonly source: string) {
    this.fd = fd;
  }
  read(n: number): Buffer | null {
    const b = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      let r: number;
      try {
        r = fs.readSync(this.fd, b, got, n - got, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') {
          sleepSync(1);
          continue;
        }
        throw new ImageError(`${this.source}: ${code === 'EISDIR' ? 'is a directory, not an image' : `reading it at byte ${this.offset + got}: ${code ?? (e as Error).message}`}`);
      }
      if (r === 0) break;
      got += r;
    }
    this.offset += got;
    if (got === 0) return null;
    if (got < n) throw new ImageError(`${this.source} is truncated: needed ${n} bytes at byte ${this.offset - got}, the stream ended after ${got}`);
    return b;
  }
}

/**
 * Read and verify a whole image: header, every record's checksums, and the
 * End record. Nothing is trusted before all of it checks out.
 */
export function readImage(fd: number, source = 'the image'): ImageRecord[] {
  return parseImage(new StreamSource(fd, source), source);
}

/** The same for an image held in memory (records are views into `buf`). */
export function readImageBuffer(buf: Buffer, source = 'the image'): ImageRecord[] {
  return parseImage(new BufferSource(buf, source), source);
}

function parseImage(src: Source, source: string): ImageRecord[] {
  const h = src.read(HEADER_SIZE);
  if (!h) throw new ImageError(`${source} is empty`);
  if (!h.subarray(0, 8).equals(MAGIC)) throw new ImageError(`${source} is not a stasis image (bad magic)`);
  if (h.readUInt32LE(12) !== crc32c(h.subarray(0, 12))) throw new ImageError(`${source}: header checksum mismatch (corrupted)`);
  const version = h.readUInt32LE(8);
  if (version !== FORMAT_VERSION) {
    const what = version > FORMAT_VERSION ? 'upgrade stasis'
      : version < UNCONVERTIBLE_BELOW ? 'it lacks state this stasis saves and restores, which no converter can supply: checkpoint the program again'
        : "run 'stasis convert'";
    throw new ImageError(`${source} has format version ${version}; this stasis reads version ${FORMAT_VERSION} (${what})`);
  }
  const records: ImageRecord[] = [];
  // Large payloads are checked together at the end, on two threads.
  const later: Array<{ payload: Buffer; crc: number; what: string }> = [];
  for (;;) {
    const offset = src.offset;
    const rh = src.read(RECORD_HEADER_SIZE);
    if (!rh) throw new ImageError(`${source} is truncated: it ends after ${records.length} records without an End record`);
    if (rh.readUInt32LE(20) !== crc32c(rh.subarray(0, 20))) {
      throw new ImageError(`${source} is corrupted: record header at byte ${offset} fails its checksum`);
    }
    const type = rh.readUInt32LE(0);
    const len = Number(rh.readBigUInt64LE(8));
    if (len > MAX_RECORD) throw new ImageError(`${source} is corrupted: record at byte ${offset} claims ${len} bytes`);
    const payload = len ? src.read(len) : Buffer.alloc(0);
    if (!payload) throw new ImageError(`${source} is truncated: record ${recordTypeName(type)} at byte ${offset} has no payload`);
    const what = `${source} is corrupted: ${recordTypeName(type)} record at byte ${offset} (${len} bytes) fails its checksum`;
    if (len >= CHECK_LATER) later.push({ payload, crc: rh.readUInt32LE(16), what });
    else if (crc32c(payload) !== rh.readUInt32LE(16)) throw new ImageError(what);
    if (type === RecordType.End) {
      const end = parseEnd(payload, `${source}: record ${records.length + 1} (End)`);
      if (end.records !== records.length) {
        throw new ImageError(`${source} is inconsistent: End record counts ${end.records} records, found ${records.length}`);
      }
      const crcs = crc32cMany(later.map((l) => l.payload));
      const bad = later.find((l, i) => crcs[i] !== l.crc);
      if (bad) throw new ImageError(bad.what);
      return records;
    }
    if (!(type in RecordType)) throw new ImageError(`${source}: unknown record type ${type} at byte ${offset}`);
    records.push({ type, offset, payload });
  }
}

/** The End record: small JSON, checked like every other record. */
function parseEnd(payload: Buffer, where: string): EndRecord {
  if (payload.length > 4096) throw new ImageError(`${where}: ${payload.length} bytes is more than an End record holds`);
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch (e) {
    throw new ImageError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  const got = checkValue('EndRecord', schema().EndRecord, value);
  if (!got.ok) throw new ImageError(`${where}: ${got.why}`);
  return got.data;
}

/** Binary layout of a Pages record: u32 runs, u32 pid, (u64 addr, u64 len)*, data. */
export function encodePagesHeader(runs: PageRun[], pid: number): Buffer {
  const b = Buffer.alloc(8 + runs.length * 16);
  b.writeUInt32LE(runs.length, 0);
  b.writeUInt32LE(pid, 4);
  runs.forEach((r, i) => {
    b.writeBigUInt64LE(BigInt(r.addr), 8 + i * 16);
    b.writeBigUInt64LE(BigInt(r.len), 16 + i * 16);
  });
  return b;
}

/**
 * The header of a Pages record, checked against PagesHeader (pid, page
 * aligned runs in user space); the data stays a view into the payload.
 * `where(pid)` names the record in a refusal.
 */
export function decodePages(payload: Buffer, where: string | ((pid?: number) => string)): { pid: number; runs: PageRun[]; data: Buffer } {
  const label = typeof where === 'string' ? () => where : where;
  if (payload.length < 8) throw new ImageError(`${label()}: Pages record too short`);
  const n = payload.readUInt32LE(0);
  const rawPid = payload.readUInt32LE(4);
  // Checked before anything is allocated for the runs.
  if (8 + n * 16 > payload.length) throw new ImageError(`${label(rawPid)}: field runs: lists ${n} runs but the record is only ${payload.length} bytes`);
  const runs: PageRun[] = new Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    // Above 2^53 the number is inexact, but then it is far out of range and refused below.
    const addr = Number(payload.readBigUInt64LE(8 + i * 16));
    const len = Number(payload.readBigUInt64LE(16 + i * 16));
    runs[i] = { addr, len };
    total += len;
  }
  const got = checkValue('PagesHeader', schema().PagesHeader, { pid: rawPid, runs });
  if (!got.ok) throw new ImageError(`${label(rawPid)}: ${got.why}`);
  const dataStart = 8 + n * 16;
  if (dataStart + total !== payload.length) {
    throw new ImageError(`${label(rawPid)}: field runs: they add up to ${total} bytes but the record carries ${payload.length - dataStart}`);
  }
  return { pid: rawPid, runs: got.data.runs, data: payload.subarray(dataStart) };
}
