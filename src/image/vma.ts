// Questions about the saved VMAs of a process, asked both when an image is
// validated and when pages are written back. Type imports only: this module
// sits below both, so neither forms an import cycle through it.
import type { ImageVma } from './schema';

/**
 * A checkpoint saves pages only for memory that is the process's own:
 * anonymous memory, private file mappings (their copied-on-write pages) and
 * shared anonymous memory (each page of an object once, in the first
 * mapping that covers it). Never a shared file mapping (its pages live in
 * the file), a memfd (the Memfds record holds it), or the vDSO.
 */
export function savesPages(v: ImageVma): boolean {
  if (v.kind === 'anon') return !v.shared;
  if (v.kind === 'file') return !v.shared;
  if (v.kind === 'ghost') return !v.shared; // like a file: the ghosts table holds its contents
  if (v.kind === 'shmem') return v.shared && v.memfd === undefined && v.shmem !== undefined;
  return false;
}

/** Binary search: the VMA holding addr, or -1. */
export function vmaAt(vmas: ImageVma[], addr: number): number {
  let lo = 0, hi = vmas.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (addr < vmas[mid].start) hi = mid - 1;
    else if (addr >= vmas[mid].end) lo = mid + 1;
    else return mid;
  }
  return -1;
}
