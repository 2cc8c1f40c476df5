// The init (pid 1) of a pid namespace stasis restores a tree into: a few
// instructions, written into a blank task, that reap every child and exit
// with the root's status when the root ends (which ends the namespace).
import { SYS } from '../sys/x86';

/** Machine code for the init loop; `status` is a writable 4-byte slot. */
export function nsInitCode(rootVpid: number, status: number): Buffer {
  const out: number[] = [];
  const labels = new Map<string, number>();
  const fixups: Array<{ at: number; label: string }> = [];
  const emit = (...b: number[]) => out.push(...b);
  const imm32 = (v: number) => { const b = Buffer.alloc(4); b.writeInt32LE(v); emit(...b); };
  const imm64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); emit(...b); };
  const label = (name: string) => labels.set(name, out.length);
  const jump = (opcode: number, name: string) => { emit(opcode, 0); fixups.push({ at: out.length - 1, label: name }); };

  label('loop');
  emit(0x48, 0xc7, 0xc7); imm32(-1); //         mov rdi, -1
  emit(0x48, 0xbe); imm64(status); //           movabs rsi, status
  emit(0x31, 0xd2); //                          xor edx, edx
  emit(0x4d, 0x31, 0xd2); //                    xor r10, r10
  emit(0xb8); imm32(SYS.wait4); //              mov eax, wait4
  emit(0x0f, 0x05); //                          syscall
  emit(0x48, 0x85, 0xc0); //                    test rax, rax
  jump(0x78, 'fail'); //                        js fail (no children left)
  emit(0x3d); imm32(rootVpid); //               cmp eax, root
  jump(0x75, 'loop'); //                        jne loop
  emit(0x48, 0xb8); imm64(status); //           movabs rax, status
  emit(0x8b, 0x38); //                          mov edi, [rax]
  emit(0x89, 0xf8); //                          mov eax, edi
  emit(0x83, 0xe0, 0x7f); //                    and eax, 0x7f
  jump(0x74, 'exited'); //                      jz exited
  emit(0x8d, 0xb8); imm32(128); //              lea edi, [rax + 128]
  jump(0xeb, 'exit'); //                        jmp exit
  label('exited');
  emit(0xc1, 0xef, 0x08); //                    shr edi, 8
  emit(0x81, 0xe7); imm32(0xff); //             and edi, 0xff
  jump(0xeb, 'exit');
  label('fail');
  emit(0xbf); imm32(1); //                      mov edi, 1
  label('exit');
  emit(0xb8); imm32(SYS.exit_group); //         mov eax, exit_group
  emit(0x0f, 0x05); //                          syscall
  for (const f of fixups) {
    const rel = labels.get(f.label)! - (f.at + 1);
    if (rel < -128 || rel > 127) throw new RangeError(`init code: jump to ${f.label} out of range`);
    out[f.at] = rel & 0xff;
  }
  return Buffer.from(out);
}
