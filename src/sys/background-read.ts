// A file read on a native thread while this one goes on. Reading
// /proc/locks takes the kernel's file_rwsem for writing, which waits for an
// RCU grace period: about 10 ms of every checkpoint, the tree frozen, spent
// here in one read(). Started as soon as the tree is frozen, the read is
// done by the time the lock check needs it. The pagemap of a large mapping
// is read the same way while the process is dumped (PagemapRead).
import fs from 'node:fs';
import { startThread, executableCode, addressOf, awaitDone, SET_DONE } from './libc';
import { SyscallError, StasisError } from './errno';

// void read_file(struct block *b), the block's header as laid out below:
// pread from `offset` until `cap` bytes or the end; result = bytes read or
// -errno. With `out` (a pagemap, read whole), its entries are then sorted
// into stretches (see PagemapRead). Then done = 1 and a futex wake.
const READ_FILE_CODE = Buffer.concat([Buffer.from([
  0x53, //                            push rbx
  0x48, 0x89, 0xfb, //                mov rbx, rdi
  0xb8, 0x02, 0x00, 0x00, 0x00, //    mov eax, 2                   (open)
  0x48, 0x8b, 0x7b, 0x10, //          mov rdi, [rbx+16]            (path)
  0xbe, 0x00, 0x00, 0x08, 0x00, //    mov esi, O_RDONLY | O_CLOEXEC
  0x31, 0xd2, //                      xor edx, edx
  0x0f, 0x05, //                      syscall
  0x48, 0x85, 0xc0, //                test rax, rax
  0x0f, 0x88, 0xe5, 0x00, 0x00, 0x00, // js store
  0x49, 0x89, 0xc0, //                mov r8, rax                  (fd)
  0x45, 0x31, 0xc9, //                xor r9d, r9d                 (bytes so far)
  0x48, 0x8b, 0x53, 0x20, //          more: mov rdx, [rbx+32]      (cap)
  0x4c, 0x29, 0xca, //                sub rdx, r9                  (room left)
  0x74, 0x27, //                      jz eof
  0xb8, 0x11, 0x00, 0x00, 0x00, //    mov eax, 17                  (pread64)
  0x4c, 0x89, 0xc7, //                mov rdi, r8
  0x48, 0x8b, 0x73, 0x18, //          mov rsi, [rbx+24]            (buf)
  0x4c, 0x01, 0xce, //                add rsi, r9
  0x4c, 0x8b, 0x53, 0x28, //          mov r10, [rbx+40]            (offset)
  0x4d, 0x01, 0xca, //                add r10, r9
  0x0f, 0x05, //                      syscall
  0x48, 0x85, 0xc0, //                test rax, rax
  0x78, 0x07, //                      js failed
  0x74, 0x08, //                      jz eof
  0x49, 0x01, 0xc1, //                add r9, rax
  0xeb, 0xd3, //                      jmp more
  0x49, 0x89, 0xc1, //                failed: mov r9, rax
  0xb8, 0x03, 0x00, 0x00, 0x00, //    eof: mov eax, 3              (close)
  0x4c, 0x89, 0xc7, //                mov rdi, r8
  0x0f, 0x05, //                      syscall
  0x4c, 0x89, 0xc8, //                mov rax, r9
  0x48, 0x83, 0x7b, 0x30, 0x00, //    cmp qword [rbx+48], 0        (out)
  0x0f, 0x84, 0x97, 0x00, 0x00, 0x00, // je store
  0x48, 0x85, 0xc0, //                test rax, rax
  0x0f, 0x88, 0x8e, 0x00, 0x00, 0x00, // js store
  0x48, 0x8b, 0x73, 0x18, //          mov rsi, [rbx+24]            (entries)
  0x48, 0x89, 0xc1, //                mov rcx, rax
  0x48, 0xc1, 0xe9, 0x03, //          shr rcx, 3                   (count)
  0x48, 0x8b, 0x7b, 0x30, //          mov rdi, [rbx+48]            (out)
  0x31, 0xd2, //                      xor edx, edx                 (i)
  0x45, 0x31, 0xdb, //                xor r11d, r11d               (stretches)
  0x48, 0x39, 0xca, //                top: cmp rdx, rcx
  0x73, 0x6e, //                      jae scanned
  0x8b, 0x44, 0xd6, 0x04, //          mov eax, [rsi+rdx*8+4]       (bits 63..32)
  0x41, 0x89, 0xc0, //                mov r8d, eax
  0x25, 0x00, 0x00, 0x00, 0xe1, //    and eax, 0xe1000000
  0x3d, 0x00, 0x00, 0x00, 0x81, //    cmp eax, 0x81000000
  0x74, 0x0e, //                      je own
  0x41, 0xf7, 0xc0, 0x00, 0x00, 0x00, 0xc4, // test r8d, 0xc4000000
  0x74, 0x2b, //                      jz none
  0x48, 0xff, 0xc2, //                inc rdx                      (another kind: left to the caller)
  0xeb, 0xda, //                      jmp top
  0x42, 0x89, 0x14, 0xdf, //          own: mov [rdi+r11*8], edx
  0x48, 0xff, 0xc2, //                own_more: inc rdx
  0x48, 0x39, 0xca, //                cmp rdx, rcx
  0x73, 0x10, //                      jae own_end
  0x8b, 0x44, 0xd6, 0x04, //          mov eax, [rsi+rdx*8+4]
  0x25, 0x00, 0x00, 0x00, 0xe1, //    and eax, 0xe1000000
  0x3d, 0x00, 0x00, 0x00, 0x81, //    cmp eax, 0x81000000
  0x74, 0xe8, //                      je own_more
  0x42, 0x89, 0x54, 0xdf, 0x04, //    own_end: mov [rdi+r11*8+4], edx
  0x49, 0xff, 0xc3, //                inc r11
  0xeb, 0xb4, //                      jmp top
  0x89, 0xd0, //                      none: mov eax, edx
  0x0d, 0x00, 0x00, 0x00, 0x80, //    or eax, 0x80000000
  0x42, 0x89, 0x04, 0xdf, //          mov [rdi+r11*8], eax
  0x48, 0xff, 0xc2, //                none_more: inc rdx
  0x48, 0x39, 0xca, //                cmp rdx, rcx
  0x73, 0x0a, //                      jae none_end
  0xf7, 0x44, 0xd6, 0x04, 0x00, 0x00, 0x00, 0xc4, // test dword [rsi+rdx*8+4], 0xc4000000
  0x74, 0xee, //                      jz none_more
  0x42, 0x89, 0x54, 0xdf, 0x04, //    none_end: mov [rdi+r11*8+4], edx
  0x49, 0xff, 0xc3, //                inc r11
  0xeb, 0x8d, //                      jmp top
  0x4c, 0x89, 0x5b, 0x38, //          scanned: mov [rbx+56], r11
  0x4c, 0x89, 0xc8, //                mov rax, r9
  0x48, 0x89, 0x43, 0x08, //          store: mov [rbx+8], rax
]), SET_DONE, Buffer.from([
  0x31, 0xc0, //                      xor eax, eax
  0x5b, //                            pop rbx
  0xc3, //                            ret
])]);

/** The block's header: u32 done, i64 result, u64 path, buf, cap, offset, out, stretches. */
const RESULT = 8, PATH = 16, BUF = 24, CAP = 32, OFFSET = 40, OUT = 48, STRETCHES = 56, HEADER = 64;
let code: unknown;
/** Blocks a thread may still write into: never freed while it might. */
const live = new Set<Buffer>();

export class BackgroundRead {
  protected readonly block: Buffer;
  protected readonly path: string;
  /** where the data starts in the block (8-aligned) */
  protected readonly at: number;

  /** `cap` bytes of `path` from `offset`; `outBytes` more for PagemapRead's stretches. */
  constructor(path: string, cap = 1 << 20, offset = 0, outBytes = 0) {
    this.path = path;
    code ??= executableCode(READ_FILE_CODE);
    // Off the V8 heap (never moved): header, path, then the data.
    const name = Buffer.from(`${path}\0`, 'utf8');
    const at = this.at = Math.ceil((HEADER + name.length) / 8) * 8;
    const b = this.block = Buffer.allocUnsafeSlow(at + cap + outBytes);
    b.fill(0, 0, HEADER);
    name.copy(b, HEADER);
    const base = BigInt(addressOf(b));
    b.writeBigUInt64LE(base + BigInt(HEADER), PATH);
    b.writeBigUInt64LE(base + BigInt(at), BUF);
    b.writeBigUInt64LE(BigInt(cap), CAP);
    b.writeBigUInt64LE(BigInt(offset), OFFSET);
    if (outBytes) b.writeBigUInt64LE(base + BigInt(at + cap), OUT);
    live.add(b);
    startThread(code, b, `reading ${path}`);
  }

  /** Wait for the thread; then its block may go (also when the text is not wanted). */
  settle(): void {
    awaitDone(this.block);
    live.delete(this.block);
  }

  /** How many bytes the thread read (it waits for it), a failure thrown by name. */
  protected got(): number {
    this.settle();
    const n = Number(this.block.readBigInt64LE(RESULT));
    if (n < 0) throw new SyscallError(`reading ${this.path}`, -n);
    return n;
  }

  /** The file's text: waits for the thread; read here again if it did not all fit. */
  text(): string {
    const n = this.got();
    const cap = Number(this.block.readBigUInt64LE(CAP));
    if (n === cap) return fs.readFileSync(this.path, 'utf8');
    return this.block.toString('utf8', this.at, this.at + n);
  }
}

/**
 * The pagemap entries of [start, end) of a process, read on a native thread
 * (~5 ms per GiB of the kernel's page walk) while this one goes on, and
 * sorted there into stretches the caller need not look at entry by entry
 * (~10 ms per GiB in V8's interpreter, in a fresh command): pages of the
 * process's own (present, not swapped, not a file page, mapped once) and
 * pages with nothing (not present, not swapped, no guard marker).
 */
export class PagemapRead extends BackgroundRead {
  private readonly count: number;

  constructor(pid: number, start: number, end: number) {
    const count = (end - start) / 4096;
    // At most one stretch per two entries, and one more.
    super(`/proc/${pid}/pagemap`, count * 8, (start / 4096) * 8, (Math.floor(count / 2) + 1) * 8);
    this.count = count;
  }

  /**
   * The entries, and the stretches as u32 pairs [first, end) of entry
   * indices, first | 0x80000000 for a stretch of nothing. Entries in no
   * stretch are of another kind.
   */
  result(): { entries: BigUint64Array; stretches: Uint32Array } {
    const n = this.got();
    if (n !== this.count * 8) throw new StasisError(`reading ${this.path}: ${n} bytes of ${this.count * 8}`);
    const b = this.block;
    const pairs = Number(b.readBigUInt64LE(STRETCHES));
    return {
      entries: new BigUint64Array(b.buffer, b.byteOffset + this.at, this.count),
      stretches: new Uint32Array(b.buffer, b.byteOffset + this.at + n, pairs * 2),
    };
  }
}
