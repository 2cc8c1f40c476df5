// One shape for every kind of file descriptor. A kind module (pipes,
// eventfd, a socket family ...) declares which fds it recognises, what it
// records about one, and how it makes one again inside a task; files.ts
// walks a process's fds and asks the registered kinds (src/kinds/fdkinds.ts)
// in order. The record of an fd is the common part (number, flags, offset,
// sharing, locks, owner) plus the kind's own fields, tagged by `kind`
// (ImageFd, a discriminated union in src/image/schema.ts).
//
// ADDING A KIND: one module exporting its record schema (a z.object with
// `kind: z.literal(...)` and its fields, bounded as src/image/fields.ts
// explains) and an FdKind object; one line in the ImageFd union; one line
// in the registry; docs/state.md and docs/image-format.md.
import fs from 'node:fs';
import type { z } from '../image/zod';
import { Fdinfo, readFdinfo } from '../proc';
import type { ImageCreds, ObjectTables } from '../image/schema';
import type { LoadedImage } from '../image/load';
import { Remote, AT_FDCWD, BatchCall } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { StasisError } from '../sys/errno';
import type { PipeTable, PipeKeeper } from './pipes';
import type { MemfdTable, MemfdKeeper } from './memfd';
import type { MqueueKeeper } from './mqueue';
import type { PidfdKeeper } from './pidfd';
import type { UnixKeeper } from './unix';
import type { TtyKeeper } from './tty';
import type { InetKeeper } from './inet';
import type { GhostKeeper } from './ghost';

export const O_CLOEXEC = 0o2000000;
const SEEK_SET = 0, O_PATH = 0o10000000;
const O_CREAT = 0o100, O_EXCL = 0o200, O_TRUNC = 0o1000, O_ASYNC = 0o20000;

/** An fd found in a process at checkpoint time, with what is known of it. */
export class FoundFd {
  private statCache?: fs.BigIntStats;
  private infoCache?: Fdinfo;

  constructor(readonly pid: number, readonly fd: number, readonly target: string) {}

  get where(): string {
    return `fd ${this.fd} of pid ${this.pid}`;
  }

  /** /proc/PID/fdinfo/FD, read once. */
  info(): Fdinfo {
    return this.infoCache ??= readFdinfo(this.pid, this.fd);
  }

  /** stat of the open file itself (through /proc/PID/fd/FD), read once. */
  stat(): fs.BigIntStats {
    if (this.statCache) return this.statCache;
    try {
      return this.statCache = fs.statSync(`/proc/${this.pid}/fd/${this.fd}`, { bigint: true });
    } catch (e) {
      throw new StasisError(`${this.where}: cannot stat ${this.target} (${(e as NodeJS.ErrnoException).code})`);
    }
  }

  /** open(2) flags without O_CLOEXEC, as records keep them. */
  get flags(): number {
    return this.info().flags & ~O_CLOEXEC;
  }
}

/** Objects of one checkpoint that fds of several processes share, kept by their kind. */
export interface ObjectTable {
  /** After every process is dumped: refuse by name what is also held outside the tree (unless named in `external`). */
  refuseOutsiders?(tree: Set<number>, external: string[]): void;
  /** Its table in the Objects record, and the entries to write there. */
  collect?(): Partial<ObjectTables>;
  /** The tree is let go (`kill`: ended): undo what the dump left in place for it (sockets in repair mode). */
  release?(kill: boolean): void;
}

/**
 * Tables of one checkpoint that span processes (a pipe has two ends in
 * two processes; its bytes are saved once). A kind with such objects keeps
 * its table here, made on first use.
 */
export class DumpContext {
  private readonly tables = new Map<new () => ObjectTable, ObjectTable>();
  /** --tcp-established: established TCP connections are taken along (in repair mode) */
  tcpEstablished = false;

  constructor(readonly pipes: PipeTable, readonly memfds?: MemfdTable) {}

  table<T extends ObjectTable>(cls: new () => T): T {
    let t = this.tables.get(cls) as T | undefined;
    if (!t) this.tables.set(cls, t = new cls());
    return t;
  }

  refuseOutsiders(tree: Set<number>, external: string[]): void {
    for (const t of this.tables.values()) t.refuseOutsiders?.(tree, external);
  }

  release(kill: boolean): void {
    for (const t of this.tables.values()) t.release?.(kill);
  }

  /** The Objects record's payload, or null when no kind has objects. */
  objects(): ObjectTables | null {
    const all: Partial<ObjectTables> = {};
    for (const t of this.tables.values()) Object.assign(all, t.collect?.());
    return Object.keys(all).length ? all as ObjectTables : null;
  }
}

/** What a restart hands to kinds: the objects made before any task, the image. */
export interface RestoreContext {
  pipes: PipeKeeper;
  memfds?: MemfdKeeper;
  mqueues?: MqueueKeeper;
  unix?: UnixKeeper;
  inet?: InetKeeper;
  ghosts?: GhostKeeper;
  image?: LoadedImage;
  /** a pidfd of an exited process, when the image holds one */
  deadPidfd?: PidfdKeeper;
  ttys?: TtyKeeper;
}

/** The kind-specific part of an fd record: `kind` and the kind's own fields. */
export interface KindRecord { kind: string }

export interface FdKind<R extends KindRecord = KindRecord> {
  /** the `kind` tags this module records */
  readonly kinds: readonly R['kind'][];
  /** whether this kind handles the fd (from its /proc link, stat or fdinfo) */
  claims(f: FoundFd): boolean;
  /** what the image records; may refuse by name (UnsupportedError) */
  dump(f: FoundFd, ctx: DumpContext): R & { path?: string; pos?: number };
  /**
   * fds of one kind that may share an open file description with this one
   * have the same key (compared with kcmp only then). Default: kind and path.
   */
  sharingKey?(r: R & { path: string }): string;
  /** Make the object inside the task at any fd number; returns that fd. */
  open(remote: Remote, r: R & CommonFd, ctx: RestoreContext, where: string): number;
  /**
   * The same as one call whose result is the fd, where `open` is only
   * that: restoreFds then opens, places and settles it in a batch with
   * other fds (and no `settle` but the offset, seekCalls).
   */
  openCall?(remote: Remote, r: R & CommonFd, where: string): BatchCall;
  /** After the fd is at its number (its offset, say). */
  settle?(remote: Remote, r: R & CommonFd, where: string): void;
  /** Restored after every fd of other kinds (an epoll watches them). */
  readonly late?: boolean;
  /** Before any process exists: what the record names is there and may be opened. */
  check?(r: R & CommonFd, creds: ImageCreds, where: string, ownTasks: Set<number>): void;
}

/** The fields every fd record has, whatever its kind. */
export interface CommonFd {
  fd: number;
  path: string;
  flags: number;
  pos: number;
  cloexec: boolean;
}

/** A kind's record schema must be a z.object tagged with a literal kind. */
export type KindSchema = z.ZodObject<{ kind: z.ZodLiteral<string> } & z.ZodRawShape>;

/**
 * Flags to open a record's file again: never creating or truncating it;
 * O_ASYNC is set afterwards with F_SETFL (restoreFdOwners), as open()
 * would not register it.
 */
export function reopenFlags(r: CommonFd): number {
  return (r.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_ASYNC)) | (r.cloexec ? O_CLOEXEC : 0);
}

/** Open one of stasis's own files (a pipe, a memfd it holds) through /proc in the task. */
export function openHeld(remote: Remote, procPath: string, r: CommonFd, where: string): number {
  return remote.call('openat', SYS.openat, [AT_FDCWD, remote.putString(procPath), reopenFlags(r), 0], where);
}

/** A file's offset, for kinds whose open file descriptions have one. */
export function seekTo(remote: Remote, r: CommonFd, where: string): void {
  for (const c of seekCalls(r, where)) remote.call(c.name, c.nr, c.args as number[], where);
}

/** seekTo's call, if it makes one, for a batch. */
export function seekCalls(r: CommonFd, where: string): BatchCall[] {
  return !(r.flags & O_PATH) && r.pos ? [{ name: 'lseek', nr: SYS.lseek, args: [r.fd, r.pos, SEEK_SET], where }] : [];
}
