// A file read on a native thread while this one goes on. Reading
// /proc/locks takes the kernel's file_rwsem for writing, which waits for an
// RCU grace period: about 10 ms of every checkpoint, the tree frozen, spent
// here in one read(). Started as soon as the tree is frozen, the read is
// done by the time the lock check needs it.
import fs from 'node:fs';
import { startThread, executableCode, addressOf, awaitDone, SET_DONE } from './libc';
import { SyscallError } from './errno';

// void read_file(struct { u32 done; u32 pad; i64 result; u64 path; u64 buf;
//                         u64 cap; } *b): result is the bytes read (cap: it
// may not all have fit) or -errno; then done = 1 and a futex wake.
const READ_FILE_CODE = Buffer.concat([Buffer.from([
  0x53, //                            push rbx
  0x48, 0x89, 0xfb, //                mov rbx, rdi
  0xb8, 0x02, 0x00, 0x00, 0x00, //    mov eax, 2                   (open)
  0x48, 0x8b, 0x7b, 0x10, //          mov rdi, [rbx+16]            (path)
  0xbe, 0x00, 0x00, 0x08, 0x00, //    mov esi, O_RDONLY | O_CLOEXEC
  0x31, 0xd2, //                      xor edx, edx
  0x0f, 0x05, //                      syscall
  0x49, 0x89, 0xc2, //                mov r10, rax                 (result, if it failed)
  0x48, 0x85, 0xc0, //                test rax, rax
  0x78, 0x3c, //                      js store
  0x49, 0x89, 0xc0, //                mov r8, rax                  (fd)
  0x45, 0x31, 0xc9, //                xor r9d, r9d                 (bytes so far)
  0x48, 0x8b, 0x53, 0x20, //          more: mov rdx, [rbx+32]      (cap)
  0x4c, 0x29, 0xca, //                sub rdx, r9                  (room left)
  0x74, 0x20, //                      jz eof
  0xb8, 0x00, 0x00, 0x00, 0x00, //    mov eax, 0                   (read)
  0x4c, 0x89, 0xc7, //                mov rdi, r8
  0x48, 0x8b, 0x73, 0x18, //          mov rsi, [rbx+24]            (buf)
  0x4c, 0x01, 0xce, //                add rsi, r9
  0x0f, 0x05, //                      syscall
  0x48, 0x85, 0xc0, //                test rax, rax
  0x78, 0x07, //                      js failed
  0x74, 0x08, //                      jz eof
  0x49, 0x01, 0xc1, //                add r9, rax
  0xeb, 0xda, //                      jmp more
  0x49, 0x89, 0xc1, //                failed: mov r9, rax
  0x4d, 0x89, 0xca, //                eof: mov r10, r9
  0xb8, 0x03, 0x00, 0x00, 0x00, //    mov eax, 3                   (close)
  0x4c, 0x89, 0xc7, //                mov rdi, r8
  0x0f, 0x05, //                      syscall
  0x4c, 0x89, 0x53, 0x08, //          store: mov [rbx+8], r10
]), SET_DONE, Buffer.from([
  0x31, 0xc0, //                      xor eax, eax
  0x5b, //                            pop rbx
  0xc3, //                            ret
])]);
let code: unknown;
/** Blocks a thread may still write into: never freed while it might. */
const live = new Set<Buffer>();

export class BackgroundRead {
  private readonly block: Buffer;
  private readonly path: string;

  constructor(path: string, cap = 1 << 20) {
    this.path = path;
    code ??= executableCode(READ_FILE_CODE);
    // Off the V8 heap (never moved): header, path, then the data.
    const name = Buffer.from(`${path}\0`, 'utf8');
    const b = this.block = Buffer.allocUnsafeSlow(64 + name.length + cap);
    b.fill(0, 0, 64);
    name.copy(b, 64);
    const base = BigInt(addressOf(b));
    b.writeBigUInt64LE(base + 64n, 16);
    b.writeBigUInt64LE(base + 64n + BigInt(name.length), 24);
    b.writeBigUInt64LE(BigInt(cap), 32);
    live.add(b);
    startThread(code, b, `reading ${path}`);
  }

  /** Wait for the thread; then its block may go (also when the text is not wanted). */
  settle(): void {
    awaitDone(this.block);
    live.delete(this.block);
  }

  /** The file's text: waits for the thread; read here again if it did not all fit. */
  text(): string {
    const b = this.block;
    this.settle();
    const n = Number(b.readBigInt64LE(8));
    if (n < 0) throw new SyscallError(`reading ${this.path}`, -n);
    const cap = Number(b.readBigUInt64LE(32));
    if (n === cap) return fs.readFileSync(this.path, 'utf8');
    const at = b.length - cap;
    return b.toString('utf8', at, at + n);
  }
}
