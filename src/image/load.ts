// The edge where an image comes in: read and verify the stream, parse every
// record through its schema, then check what spans records (validate.ts).
// Past this point nothing sees an unchecked value. Refusals are one line:
//   IMG: record N (process P): field F: reason
import fs from 'node:fs';
import { z } from './zod';
import { readImage, readImageBuffer, RecordType, decodePages, recordTypeName, ImageRecord } from './stream';
import {
  ImageProcess, ImageZombie, ImagePipe, ImageMemfd, PipesRecord, MemfdsRecord, PageRun, ObjectTables,
} from './schema';
import { validateImage } from './validate';
import { ImageError } from '../sys/errno';
import { checkValue, CompiledSchema } from './record-check';
import { mapFile } from '../sys/libc';

export interface LoadedImage {
  /** where the image came from, as refusals name it (a path or "stdin") */
  source: string;
  /** live processes, parents before children; the first is the root */
  processes: ImageProcess[];
  zombies: ImageZombie[];
  pipes: ImagePipe[];
  memfds: ImageMemfd[];
  /** the Objects record: tables of sockets, deleted files, IPC objects ({} when absent) */
  objects: ObjectTables;
  pages: Array<{ pid: number; runs: PageRun[]; data: Buffer }>;
  /** the root process */
  process: ImageProcess;
  /** record number (1-based, stream order) of each process and zombie, by pid */
  recordOf: Map<number, number>;
  /** Let go of the mapped image file, once nothing reads the page buffers any more. */
  release(): void;
  /**
   * The page buffers are views of a read-only mapping of the image file:
   * a page dropped from it (MADV_DONTNEED) reads back from the file.
   */
  fileMapped: boolean;
}

/** JSON records larger than this are refused before parsing (Pipes and Memfds carry data). */
const MAX_JSON: Partial<Record<RecordType, number>> = {
  [RecordType.Process]: 64 << 20,
  [RecordType.Zombie]: 4096,
};

/** Where a refusal points: "IMG: record N (process P)". */
export function recordLabel(source: string, n: number, type: number, pid?: number): string {
  return `${source}: record ${n} (${pid !== undefined ? `process ${pid}` : recordTypeName(type)})`;
}

/** The pid a record claims, when it is a plausible one: only to name it in a refusal. */
function claimedPid(v: unknown): number | undefined {
  const p = (v as { pid?: unknown } | null)?.pid;
  return typeof p === 'number' && Number.isSafeInteger(p) ? p : undefined;
}

function parseRecord<S extends z.ZodType>(name: CompiledSchema, schema: S, r: ImageRecord, n: number, source: string): z.infer<S> {
  const limit = MAX_JSON[r.type as RecordType];
  if (limit !== undefined && r.payload.length > limit) {
    throw new ImageError(`${recordLabel(source, n, r.type)}: ${r.payload.length} bytes is more than a ${recordTypeName(r.type)} record can hold (${limit})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(r.payload.toString('utf8'));
  } catch (e) {
    throw new ImageError(`${recordLabel(source, n, r.type)}: not valid JSON (${(e as Error).message})`);
  }
  const got = checkValue(name, schema, value);
  if (!got.ok) throw new ImageError(`${recordLabel(source, n, r.type, claimedPid(value))}: ${got.why}`);
  return got.data;
}

/** Parse verified records into a LoadedImage (the records' buffers are not copied). */
export function parseRecords(records: ImageRecord[], source: string, release?: () => void): LoadedImage {
  const img: LoadedImage = {
    source, processes: [], zombies: [], pipes: [], memfds: [], objects: {}, pages: [], process: undefined as unknown as ImageProcess,
    recordOf: new Map(), release: release ?? (() => {}), fileMapped: release !== undefined,
  };
  const pagesRecord: number[] = [];
  let sawObjects = false;
  records.forEach((r, i) => {
    const n = i + 1;
    switch (r.type) {
      case RecordType.Process: {
        const p = parseRecord('ImageProcess', ImageProcess, r, n, source);
        img.processes.push(p);
        if (!img.recordOf.has(p.pid)) img.recordOf.set(p.pid, n);
        break;
      }
      case RecordType.Zombie: {
        const z = parseRecord('ImageZombie', ImageZombie, r, n, source);
        img.zombies.push(z);
        if (!img.recordOf.has(z.pid)) img.recordOf.set(z.pid, n);
        break;
      }
      case RecordType.Pipes: img.pipes.push(...parseRecord('PipesRecord', PipesRecord, r, n, source)); break;
      case RecordType.Memfds: img.memfds.push(...parseRecord('MemfdsRecord', MemfdsRecord, r, n, source)); break;
      case RecordType.Objects: {
        if (sawObjects) throw new ImageError(`${recordLabel(source, n, r.type)}: a second Objects record`);
        sawObjects = true;
        img.objects = parseRecord('ObjectTables', ObjectTables, r, n, source);
        break;
      }
      case RecordType.Pages:
        img.pages.push(decodePages(r.payload, (pid) => recordLabel(source, n, r.type, pid)));
        pagesRecord.push(n);
        break;
      default: throw new ImageError(`${recordLabel(source, n, r.type)}: unexpected record type`);
    }
  });
  if (!img.processes.length) throw new ImageError(`${source}: no Process record`);
  img.process = img.processes[0];
  validateImage(img, pagesRecord);
  return img;
}

/** Read an image from a path or fd, verifying every record. */
export function loadImage(input: string | number): LoadedImage {
  const source = typeof input === 'number' ? (input === 0 ? 'stdin' : `fd ${input}`) : input;
  let fd: number;
  try {
    fd = typeof input === 'number' ? input : fs.openSync(input, 'r');
  } catch (e) {
    throw new ImageError(`${source}: cannot open (${(e as NodeJS.ErrnoException).code})`);
  }
  let records: ImageRecord[];
  let release: (() => void) | undefined;
  try {
    // A file is mapped rather than read: no copy of the pages, no fresh memory.
    const st = fs.fstatSync(fd);
    if (typeof input !== 'number' && st.isFile() && st.size > 0) {
      const map = mapFile(fd, st.size, source);
      release = map.unmap;
      try {
        records = readImageBuffer(map.buf, source);
      } catch (e) {
        map.unmap();
        throw e;
      }
    } else {
      records = readImage(fd, source);
    }
  } finally {
    if (typeof input !== 'number') fs.closeSync(fd);
  }
  try {
    return parseRecords(records, source, release);
  } catch (e) {
    release?.();
    throw e;
  }
}
