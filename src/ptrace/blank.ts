// The blank process a restart transforms: a static ELF of a few hundred
// bytes, generated here, that only calls pause() forever. Its address space
// is nearly empty and it depends on nothing installed on the machine.
// It dies with the stasis that spawned it (PR_SET_PDEATHSIG, and a check
// that its parent is still that stasis once it is set): killed before it
// is traced or held, stasis leaves no blank behind. The tasks cloned from
// it do not inherit that setting; a blank that becomes a restored process
// gets the image's parent-death signal like any other.
import fs from 'node:fs';
import { memfdCreate, posixSpawn } from '../sys/libc';

/** Where the blank program is loaded; any image mapping here is fine (it is unmapped first). */
export const BLANK_BASE = 0x10000;
const CODE_OFFSET = 64 + 2 * 56;
/** The blank's code; `parent` is the pid it must find as its parent once its parent-death signal is set. */
function blankCode(parent: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeInt32LE(parent);
  return Buffer.from([
    0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, PR_SET_PDEATHSIG
    0xbe, 0x09, 0x00, 0x00, 0x00, // mov esi, SIGKILL
    0xb8, 0x9d, 0x00, 0x00, 0x00, // mov eax, 157 (prctl)
    0x0f, 0x05, // syscall
    0xb8, 0x6e, 0x00, 0x00, 0x00, // mov eax, 110 (getppid)
    0x0f, 0x05, // syscall
    0x3d, ...p, // cmp eax, parent
    0x75, 0x09, // jne die: the parent died before the signal was set
    0xb8, 0x22, 0x00, 0x00, 0x00, // loop: mov eax, 34 (pause)
    0x0f, 0x05, // syscall
    0xeb, 0xf7, // jmp loop
    0xb8, 0xe7, 0x00, 0x00, 0x00, // die: mov eax, 231 (exit_group)
    0x31, 0xff, // xor edi, edi
    0x0f, 0x05, // syscall
  ]);
}
/** Address of the `syscall` instruction of the pause() loop: the first injection runs there. */
export const BLANK_SYSCALL = BLANK_BASE + CODE_OFFSET + 36;

export function blankElf(parent = process.pid): Buffer {
  return tinyElf(blankCode(parent));
}

/** A static x86-64 ELF whose one r-x segment, at BLANK_BASE, is its headers then `code` (the entry point). */
export function tinyElf(code: Buffer): Buffer {
  const size = CODE_OFFSET + code.length;
  const b = Buffer.alloc(size);
  // ELF header
  b.write('\x7fELF', 0, 'latin1');
  b[4] = 2; // 64-bit
  b[5] = 1; // little endian
  b[6] = 1; // version
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(62, 18); // EM_X86_64
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(BigInt(BLANK_BASE + CODE_OFFSET), 24); // entry
  b.writeBigUInt64LE(64n, 32); // phoff
  b.writeUInt16LE(64, 52); // ehsize
  b.writeUInt16LE(56, 54); // phentsize
  b.writeUInt16LE(2, 56); // phnum
  // PT_LOAD r-x covering the whole file
  let p = 64;
  b.writeUInt32LE(1, p);
  b.writeUInt32LE(5, p + 4);
  b.writeBigUInt64LE(0n, p + 8);
  b.writeBigUInt64LE(BigInt(BLANK_BASE), p + 16);
  b.writeBigUInt64LE(BigInt(BLANK_BASE), p + 24);
  b.writeBigUInt64LE(BigInt(size), p + 32);
  b.writeBigUInt64LE(BigInt(size), p + 40);
  b.writeBigUInt64LE(0x1000n, p + 48);
  // PT_GNU_STACK rw-: no executable stack, no READ_IMPLIES_EXEC
  p += 56;
  b.writeUInt32LE(0x6474e551, p);
  b.writeUInt32LE(6, p + 4);
  code.copy(b, CODE_OFFSET);
  return b;
}

let blankFd = -1;

/** Start a blank process (our child, not libuv's) and return its pid. */
export function spawnBlank(opts: { setsid?: boolean } = {}): number {
  if (blankFd < 0) {
    blankFd = memfdCreate('stasis-blank', 1 /* MFD_CLOEXEC */);
    fs.writeSync(blankFd, blankElf());
  }
  return posixSpawn(`/proc/${process.pid}/fd/${blankFd}`, ['stasis-restore'], { setsid: opts.setsid, env: [], closeFrom: 3 });
}
