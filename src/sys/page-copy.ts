// Pages put into another process's fresh memory with userfaultfd's
// UFFDIO_COPY, on two threads. The kernel allocates each page and copies
// into it in one step: no zeroing first, no fault per page. Restoring 1 GiB
// into fresh memory here: 0.28-0.31 s on one thread, 0.15 s on two, against
// 0.5-1.4 s for MADV_POPULATE_WRITE and process_vm_writev.
import koffi from './koffi';
import { startThread, executableCode, addressOf, awaitDone, DONE_EPILOGUE } from './libc';

// void copy_jobs(struct { u32 done; u32 pad; u64 uffd; u64 jobs; u64 n;
//                         u64 *next; u64 drop; } *b): while the shared
// counter *next (taken with lock xadd) is below n, ioctl(uffd, UFFDIO_COPY,
// &jobs[i]) for that job (struct uffdio_copy, 40 bytes: the kernel writes
// the bytes copied, or -errno, into its last field), and with drop set,
// madvise(MADV_DONTNEED) on the whole pages of its source; then done = 1
// and a futex wake.
// Both threads take jobs from the one counter, so neither waits long for
// the other when a CPU is busy elsewhere (with fixed halves, one waited
// ~27 ms for the other in a profile of 1 GiB; the copy as a whole is
// bound by memory speed, and took as long).
const COPY_JOBS_CODE = Buffer.concat([Buffer.from([
  0x53, //                            push rbx
  0x41, 0x54, //                      push r12
  0x41, 0x55, //                      push r13
  0x48, 0x89, 0xfb, //                mov rbx, rdi
  0x4c, 0x8b, 0x63, 0x10, //          mov r12, [rbx+16]            (jobs)
  0x4c, 0x8b, 0x6b, 0x18, //          mov r13, [rbx+24]            (n)
  0x48, 0x8b, 0x4b, 0x20, //          more: mov rcx, [rbx+32]      (next)
  0xb8, 0x01, 0x00, 0x00, 0x00, //    mov eax, 1
  0xf0, 0x48, 0x0f, 0xc1, 0x01, //    lock xadd [rcx], rax         (i = next++)
  0x4c, 0x39, 0xe8, //                cmp rax, r13
  0x73, 0x51, //                      jae fin
  0x48, 0x6b, 0xd0, 0x28, //          imul rdx, rax, 40
  0x4c, 0x01, 0xe2, //                add rdx, r12                 (&jobs[i])
  0xb8, 0x10, 0x00, 0x00, 0x00, //    mov eax, 16                  (ioctl)
  0x48, 0x8b, 0x7b, 0x08, //          mov rdi, [rbx+8]             (uffd)
  0xbe, 0x03, 0xaa, 0x28, 0xc0, //    mov esi, UFFDIO_COPY
  0x0f, 0x05, //                      syscall
  0x48, 0x83, 0x7b, 0x28, 0x00, //    cmp qword [rbx+40], 0        (drop?)
  0x74, 0xcf, //                      je more
  0x48, 0x8b, 0x7a, 0x08, //          mov rdi, [rdx+8]             (src)
  0x48, 0x89, 0xfe, //                mov rsi, rdi
  0x48, 0x03, 0x72, 0x10, //          add rsi, [rdx+16]            (src + len)
  0x48, 0x81, 0xc7, 0xff, 0x0f, 0x00, 0x00, // add rdi, 4095
  0x48, 0x81, 0xe7, 0x00, 0xf0, 0xff, 0xff, // and rdi, -4096       (first whole page)
  0x48, 0x81, 0xe6, 0x00, 0xf0, 0xff, 0xff, // and rsi, -4096       (end of the last)
  0x48, 0x29, 0xfe, //                sub rsi, rdi
  0x7e, 0xaa, //                      jle more
  0xba, 0x04, 0x00, 0x00, 0x00, //    mov edx, MADV_DONTNEED
  0xb8, 0x1c, 0x00, 0x00, 0x00, //    mov eax, 28                  (madvise)
  0x0f, 0x05, //                      syscall
  0xeb, 0x9c, //                      jmp more
  // fin: DONE_EPILOGUE
]), DONE_EPILOGUE]);

let code: { ptr: unknown; call: (block: Buffer) => void } | undefined;

/** One copy: `len` bytes from `src` at `off` to address `dst` of the userfaultfd's process. */
export interface CopyJob { dst: number; src: Buffer; off: number; len: number }

const JOB_SIZE = 40;
/** Jobs no longer than this, so that the two threads share the bytes evenly. */
export const COPY_PIECE = 4 << 20;

/**
 * Run every job with UFFDIO_COPY on `uffd`, on a thread of its own and on
 * this one, each taking the next job until none is left. Returns the bytes each job copied: all
 * of them, or fewer where the kernel refused (a page already there,
 * EEXIST; anything else), which the caller writes some other way. The
 * source buffers must not change until it returns.
 *
 * `dropSources`: the sources are a read-only mapping of a file, whose
 * pages are dropped as soon as they are copied (a page read again comes
 * back from the file). Unmapping 1 GiB of a tmpfs image (4 KiB pages) cost
 * a restart 17-30 ms at its end, on one CPU; here both copying threads
 * share that work.
 */
export function copyPages(uffd: number, jobs: CopyJob[], dropSources = false): number[] {
  if (!code) {
    const ptr = executableCode(COPY_JOBS_CODE);
    code = { ptr, call: koffi.decode(ptr, koffi.proto('void stasis_copy_jobs(void *block)')) as (block: Buffer) => void };
  }
  const table = Buffer.allocUnsafeSlow(JOB_SIZE * jobs.length).fill(0);
  jobs.forEach((j, i) => {
    table.writeBigUInt64LE(BigInt(j.dst), i * JOB_SIZE);
    table.writeBigUInt64LE(BigInt(addressOf(j.src) + j.off), i * JOB_SIZE + 8);
    table.writeBigUInt64LE(BigInt(j.len), i * JOB_SIZE + 16);
  });
  const next = Buffer.allocUnsafeSlow(8).fill(0);
  const block = () => {
    const b = Buffer.allocUnsafeSlow(48).fill(0);
    b.writeBigUInt64LE(BigInt(uffd), 8);
    b.writeBigUInt64LE(BigInt(addressOf(table)), 16);
    b.writeBigUInt64LE(BigInt(jobs.length), 24);
    b.writeBigUInt64LE(BigInt(addressOf(next)), 32);
    b.writeBigUInt64LE(dropSources ? 1n : 0n, 40);
    return b;
  };
  const theirs = block();
  const mine = block();
  const helped = jobs.length > 1;
  if (helped) startThread(code.ptr, theirs, 'copying pages');
  code.call(mine);
  if (helped) awaitDone(theirs);
  return jobs.map((j, i) => Math.max(0, Math.min(j.len, Number(table.readBigInt64LE(i * JOB_SIZE + 32)))));
}
