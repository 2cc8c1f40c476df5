// The kernel's special mappings ([vvar], [vvar_vclock], [vdso]) are not
// saved: the fresh process has its own, which are moved with mremap to the
// addresses the program knows. Both sets must come from the same kernel
// layout, so sizes are compared and a mismatch is refused. A program may
// have moved them (mremap) or unmapped them: they are moved to where it
// put them, and the ones it unmapped are unmapped again. (The kernel
// forbids splitting them, so each is whole or absent.)
import { Vma } from '../proc';
import { ImageVma } from '../image/schema';
import { Remote, BatchCall } from '../ptrace/remote';
import { SYS } from '../sys/x86';
import { UnsupportedError } from '../sys/errno';

const NAMES = ['[vvar]', '[vvar_vclock]', '[vdso]'];
const MREMAP_MAYMOVE = 1, MREMAP_FIXED = 2;

export function specialVmas(vmas: Array<Vma | ImageVma>): Map<string, { start: number; end: number }> {
  const m = new Map<string, { start: number; end: number }>();
  for (const v of vmas) {
    const name = 'kind' in v ? v.name : v.path;
    if (NAMES.includes(name)) m.set(name, { start: v.start, end: v.end });
  }
  return m;
}

/** Move the live task's special mappings to where the image had them; unmap the ones it had not. */
export function moveVdso(remote: Remote, image: ImageVma[], live: Vma[], park: number): void {
  const want = specialVmas(image);
  const have = specialVmas(live);
  for (const name of NAMES) {
    const w = want.get(name), h = have.get(name);
    if (!w && h) {
      // The program had unmapped it.
      remote.call('munmap', SYS.munmap, [h.start, h.end - h.start], `${name}, unmapped by the program`);
      have.delete(name);
      continue;
    }
    if (!w && !h) continue;
    if (!w || !h || w.end - w.start !== h.end - h.start) {
      const size = (r?: { start: number; end: number }) => (r ? `${(r.end - r.start) / 1024} KiB` : 'absent');
      throw new UnsupportedError(`${name}: the image has ${size(w)}, this kernel ${size(h)}; restart on the kernel the image was taken on`);
    }
  }
  const names = NAMES.filter((n) => have.has(n));
  if (names.every((n) => have.get(n)!.start === want.get(n)!.start)) return;
  // Through a parking area, so no move lands on a mapping not yet moved;
  // all moves in one batch (a failure fails the restart: what the later
  // moves did then does not matter).
  let off = 0;
  const parked = new Map<string, number>();
  const moves: BatchCall[] = [];
  for (const n of names) {
    const h = have.get(n)!;
    const len = h.end - h.start;
    moves.push({ name: 'mremap', nr: SYS.mremap, args: [h.start, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, park + off], where: `${n} to parking` });
    parked.set(n, park + off);
    off += len;
  }
  for (const n of names) {
    const w = want.get(n)!;
    const len = w.end - w.start;
    moves.push({ name: 'mremap', nr: SYS.mremap, args: [parked.get(n)!, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, w.start], where: `${n} to 0x${w.start.toString(16)}` });
  }
  remote.batch(moves);
}
