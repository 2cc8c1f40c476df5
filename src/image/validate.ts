// Checks that span records, made once every record has passed its schema
// and before any process exists: the tree is a tree, ids are unique,
// mappings lie in user space without overlapping, saved pages only go where
// a checkpoint saves pages, and every id one record names exists in another.
// Each check is linear (or n log n) in the size of the image.
import type { LoadedImage } from './load';
import type { ImageProcess, ImageVma, PageRun } from './schema';
import { recordLabel } from './load';
import { RecordType } from './stream';
import { PAGE_SIZE, USER_END, base64Bytes } from './fields';
import { ImageError } from '../sys/errno';
import { savesPages, vmaAt } from './vma';
import { GHOST_LIMIT_MAX } from '../kinds/ghost';

export { savesPages, vmaAt };


const hex = (n: number) => `0x${n.toString(16)}`;

export function validateImage(img: LoadedImage, pagesRecord: number[]): void {
  const src = img.source;
  const at = (pid: number) => recordLabel(src, img.recordOf.get(pid) ?? 0, RecordType.Process, pid);
  const fail = (pid: number, field: string, why: string): never => {
    throw new ImageError(`${at(pid)}: field ${field}: ${why}`);
  };

  // One record per pid; threads unique across the image.
  const index = new Map<number, number>(); // live pid -> position
  const zombiePids = new Set<number>();
  const tids = new Map<number, number>(); // tid or zombie pid -> owning pid
  img.processes.forEach((p, i) => {
    if (index.has(p.pid)) fail(p.pid, 'pid', `a second record for pid ${p.pid}`);
    index.set(p.pid, i);
  });
  for (const z of img.zombies) {
    if (index.has(z.pid) || zombiePids.has(z.pid)) fail(z.pid, 'pid', `a second record for pid ${z.pid}`);
    zombiePids.add(z.pid);
    tids.set(z.pid, z.pid);
  }
  for (const p of img.processes) {
    if (p.threads[0].tid !== p.pid) fail(p.pid, 'threads[0].tid', `the main thread must come first, with tid ${p.pid}`);
    p.threads.forEach((t, i) => {
      const owner = tids.get(t.tid);
      if (owner !== undefined) fail(p.pid, `threads[${i}].tid`, `tid ${t.tid} is also ${owner === t.tid ? 'a process' : `a thread of pid ${owner}`} in the image`);
      if (i > 0 && index.has(t.tid)) fail(p.pid, `threads[${i}].tid`, `tid ${t.tid} is also a process in the image`);
      tids.set(t.tid, p.pid);
    });
  }

  // A tree: the root's parent is outside, every other parent is a live
  // process listed earlier (so there is no cycle).
  const root = img.processes[0];
  if (index.has(root.ppid) || zombiePids.has(root.ppid)) fail(root.pid, 'ppid', `the root's parent ${root.ppid} is in the image: not a tree`);
  img.processes.forEach((p, i) => {
    if (i === 0) return;
    const parent = index.get(p.ppid);
    if (parent === undefined || parent >= i) fail(p.pid, 'ppid', `parent ${p.ppid} is not a process listed before it`);
  });
  for (const z of img.zombies) {
    if (!index.has(z.ppid)) fail(z.pid, 'ppid', `parent ${z.ppid} is not a live process of the image`);
  }

  const pipeIds = new Set(img.pipes.map((p) => p.id));
  if (pipeIds.size !== img.pipes.length) throw new ImageError(`${src}: Pipes record: a pipe id is listed twice`);
  const memfdIds = new Set(img.memfds.map((m) => m.id));
  if (memfdIds.size !== img.memfds.length) throw new ImageError(`${src}: Memfds record: a memfd id is listed twice`);
  for (const p of img.pipes) {
    if (p.kind === 'fifo' && !p.path) throw new ImageError(`${src}: Pipes record: FIFO ${p.id} has no path`);
    if (base64Bytes(p.data) > p.size) throw new ImageError(`${src}: Pipes record: pipe ${p.id} holds more data than its size ${p.size}`);
    if (p.external && p.data) throw new ImageError(`${src}: Pipes record: external pipe ${p.id} carries data`);
  }
  for (const m of img.memfds) {
    let end = 0;
    for (const s of m.segments) {
      if (s.offset < end) throw new ImageError(`${src}: Memfds record: memfd ${m.id}: segments overlap or are out of order`);
      end = s.offset + base64Bytes(s.data);
    }
    if (end > m.size) throw new ImageError(`${src}: Memfds record: memfd ${m.id}: data beyond its size ${m.size}`);
  }
  const ghostIds = checkGhosts(img);

  // Saved pages of each process, sorted, to check them against its VMAs.
  const runsOf = new Map<number, PageRun[]>();
  img.pages.forEach((pg, i) => {
    if (!index.has(pg.pid)) {
      throw new ImageError(`${recordLabel(src, pagesRecord[i], RecordType.Pages, pg.pid)}: field pid: pages of pid ${pg.pid}, which is not a live process of the image`);
    }
    let list = runsOf.get(pg.pid);
    if (!list) runsOf.set(pg.pid, list = []);
    for (const r of pg.runs) list.push(r);
  });
  for (const list of runsOf.values()) list.sort((a, b) => a.addr - b.addr);

  const isAncestor = ancestry(img.processes);
  const fdsOf = new Map<number, Set<number>>();
  img.processes.forEach((p, i) => {
    checkVmas(p, i, fail, memfdIds, img, index, isAncestor);
    p.vmas.forEach((v, j) => {
      if ((v.kind === 'ghost') !== (v.ghost !== undefined)) fail(p.pid, `vmas[${j}].ghost`, v.ghost === undefined ? 'a mapping of a deleted file without its id' : `a ${v.kind} mapping cannot name a deleted file`);
      if (v.ghost !== undefined && !ghostIds.has(v.ghost)) fail(p.pid, `vmas[${j}].ghost`, `deleted file ${v.ghost} is not in the ghosts table`);
    });
    p.fds.forEach((f, j) => {
      if (f.kind === 'ghost' && f.sameAs === undefined && !f.sharedWith && !ghostIds.has(f.ghost)) fail(p.pid, `fds[${j}].ghost`, `deleted file ${f.ghost} is not in the ghosts table`);
    });
    checkPages(p, runsOf.get(p.pid) ?? [], runsOf, fail);
    checkFds(p, i, fail, pipeIds, memfdIds, index, fdsOf);
    p.threads.forEach((t, k) => {
      // The kernel writes the rseq area whenever the thread returns to user space.
      if (!t.rseq) return;
      const addr = Number(BigInt(t.rseq.addr));
      const v = p.vmas[vmaAt(p.vmas, addr)];
      if (!v || addr + t.rseq.len > v.end || v.prot[1] !== 'w') fail(p.pid, `threads[${k}].rseq.addr`, `${t.rseq.addr} is not in a writable mapping`);
    });
  });
}

type Fail = (pid: number, field: string, why: string) => never;

/** The ghosts table: ids unique, segments in order inside the file, each file held by some fd or mapping (nothing is made for nobody). */
function checkGhosts(img: LoadedImage): Set<number> {
  const where = `${img.source}: Objects record: ghosts`;
  const ghosts = img.objects.ghosts ?? [];
  const ids = new Set(ghosts.map((g) => g.id));
  if (ids.size !== ghosts.length) throw new ImageError(`${where}: a deleted file id is listed twice`);
  const held = new Set<number>();
  for (const p of img.processes) {
    for (const v of p.vmas) if (v.ghost !== undefined) held.add(v.ghost);
    for (const f of p.fds) if (f.kind === 'ghost') held.add(f.ghost);
  }
  let total = 0;
  for (const g of ghosts) {
    if (!held.has(g.id)) throw new ImageError(`${where}: deleted file ${g.id} (${g.path}) is held by no fd or mapping of the image`);
    const name = g.path.slice(g.path.lastIndexOf('/') + 1);
    if (!name || name === '.' || name === '..' || g.path.includes('//') || /\/\.\.?\//.test(g.path)) throw new ImageError(`${where}: deleted file ${g.id}: ${g.path} is not a plain path to a file`);
    let end = 0;
    for (const s of g.segments) {
      if (s.offset < end) throw new ImageError(`${where}: deleted file ${g.id}: segments overlap or are out of order`);
      end = s.offset + base64Bytes(s.data);
      total += base64Bytes(s.data);
    }
    if (end > g.size) throw new ImageError(`${where}: deleted file ${g.id}: data beyond its size ${g.size}`);
  }
  if (total > GHOST_LIMIT_MAX) throw new ImageError(`${where}: ${total} bytes of data, more than an image carries (${GHOST_LIMIT_MAX})`);
  return ids;
}

function checkVmas(p: ImageProcess, i: number, fail: Fail, memfdIds: Set<number>, img: LoadedImage, index: Map<number, number>, isAncestor: (a: number, b: number) => boolean): void {
  let prevEnd = 0;
  p.vmas.forEach((v, j) => {
    const f = `vmas[${j}]`;
    if (v.end <= v.start) fail(p.pid, `${f}.end`, `${hex(v.end)} is not above its start ${hex(v.start)}`);
    if (v.end > USER_END) fail(p.pid, `${f}.end`, `${hex(v.end)} is outside the user address space`);
    if (v.start < prevEnd) fail(p.pid, `${f}.start`, `${hex(v.start)} overlaps the mapping before it or is out of order`);
    prevEnd = v.end;
    if (v.kind === 'file' && !v.file) fail(p.pid, `${f}.file`, 'a file mapping without its file');
    if (v.kind !== 'file' && v.file) fail(p.pid, `${f}.file`, `a ${v.kind} mapping with a file`);
    if (v.kind === 'shmem' && !v.shared) fail(p.pid, `${f}.shared`, 'shared memory mapped private');
    if (v.kind === 'shmem' && (v.memfd === undefined) === (v.shmem === undefined)) fail(p.pid, `${f}.shmem`, 'shared memory needs exactly one of shmem and memfd');
    if (v.kind !== 'shmem' && (v.memfd !== undefined || v.shmem !== undefined)) fail(p.pid, `${f}.kind`, `a ${v.kind} mapping cannot name shared memory`);
    if (v.memfd !== undefined && !memfdIds.has(v.memfd)) fail(p.pid, `${f}.memfd`, `memfd ${v.memfd} is not in the Memfds record`);
    const from = v.shmem?.from;
    if (from) {
      const owner = index.get(from.pid);
      // Its first mapping: in a process listed before, or earlier in this one.
      if (owner === undefined || owner > i) fail(p.pid, `${f}.shmem.from.pid`, `pid ${from.pid} is not this process or one listed before it`);
      const theirVmas = img.processes[owner].vmas;
      const theirs = theirVmas[vmaAt(theirVmas, from.start)] as ImageVma | undefined;
      if (!theirs || theirs.start !== from.start || theirs.end !== from.end || theirs.kind !== 'shmem' || theirs.shmem?.ino !== v.shmem!.ino || theirs.shmem.from) {
        fail(p.pid, `${f}.shmem.from`, `pid ${from.pid} has no shared memory ${v.shmem!.ino} at ${hex(from.start)}-${hex(from.end)}`);
      }
    }
    const pages = (v.end - v.start) / PAGE_SIZE;
    if (v.savedPages > pages) fail(p.pid, `${f}.savedPages`, `${v.savedPages} pages saved for a mapping of ${pages}`);
    if (!savesPages(v) && (v.savedPages || v.inherited?.length)) {
      fail(p.pid, `${f}.savedPages`, `a ${v.shared ? 'shared' : 'private'} ${v.kind} mapping${v.file ? ` of ${v.file.path}` : ''} never has saved pages`);
    }
    // Inherited pages: inside the mapping, from an ancestor that saved them.
    v.inherited?.forEach((g, k) => {
      if (g.from === p.pid || !isAncestor(g.from, p.pid)) fail(p.pid, `${f}.inherited[${k}].from`, `pid ${g.from} is not an ancestor`);
      let total = 0;
      g.runs.forEach((r, m) => {
        if (r.addr < v.start || r.addr + r.len > v.end) fail(p.pid, `${f}.inherited[${k}].runs[${m}]`, `${hex(r.addr)}+${hex(r.len)} is outside the mapping`);
        total += r.len / PAGE_SIZE;
      });
      if (total > pages) fail(p.pid, `${f}.inherited[${k}]`, 'more pages than the mapping has');
    });
  });
}

/**
 * Ancestor queries in O(1) after one walk of the tree (entry and exit
 * times of an iterative depth-first walk; parents are listed first).
 */
function ancestry(procs: ImageProcess[]): (a: number, b: number) => boolean {
  const children = new Map<number, number[]>();
  for (const p of procs.slice(1)) {
    let list = children.get(p.ppid);
    if (!list) children.set(p.ppid, list = []);
    list.push(p.pid);
  }
  const tin = new Map<number, number>(), tout = new Map<number, number>();
  let clock = 0;
  const stack: Array<[number, boolean]> = [[procs[0].pid, false]];
  while (stack.length) {
    const [pid, done] = stack.pop()!;
    if (done) { tout.set(pid, clock++); continue; }
    tin.set(pid, clock++);
    stack.push([pid, true]);
    for (const c of children.get(pid) ?? []) stack.push([c, false]);
  }
  return (a, b) => tin.has(a) && tin.has(b) && tin.get(a)! <= tin.get(b)! && tout.get(b)! <= tout.get(a)!;
}


/** Is [addr, addr+len) all within the sorted, non-overlapping runs? */
function covered(runs: PageRun[], addr: number, len: number): boolean {
  let lo = 0, hi = runs.length - 1, hit = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (runs[mid].addr <= addr) { hit = mid; lo = mid + 1; } else hi = mid - 1;
  }
  for (let k = hit; k >= 0 && k < runs.length && len > 0; k++) {
    const r = runs[k];
    if (r.addr > addr || r.addr + r.len <= addr) return false;
    const n = Math.min(len, r.addr + r.len - addr);
    addr += n;
    len -= n;
  }
  return len <= 0;
}

function checkPages(p: ImageProcess, runs: PageRun[], runsOf: Map<number, PageRun[]>, fail: Fail): void {
  const bytes = new Array<number>(p.vmas.length).fill(0);
  let prevEnd = 0;
  for (const r of runs) {
    const where = `pages ${hex(r.addr)}-${hex(r.addr + r.len)}`;
    if (r.addr < prevEnd) fail(p.pid, 'pages', `${where} are saved twice`);
    prevEnd = r.addr + r.len;
    const j = vmaAt(p.vmas, r.addr);
    if (j < 0 || r.addr + r.len > p.vmas[j].end) fail(p.pid, 'pages', `${where} are not inside one mapping`);
    const v = p.vmas[j];
    if (!savesPages(v)) fail(p.pid, `vmas[${j}]`, `${where} aimed at a ${v.shared ? 'shared' : 'private'} ${v.kind} mapping${v.file ? ` of ${v.file.path}` : ''}, which never has saved pages`);
    bytes[j] += r.len;
  }
  // A page is either saved or inherited, once: this also bounds the
  // copying of inherited pages by the process's own address space.
  const all: PageRun[] = [...runs];
  for (const v of p.vmas) for (const g of v.inherited ?? []) for (const r of g.runs) all.push(r);
  if (all.length > runs.length) {
    all.sort((a, b) => a.addr - b.addr);
    for (let k = 1; k < all.length; k++) {
      if (all[k].addr < all[k - 1].addr + all[k - 1].len) fail(p.pid, 'vmas', `page ${hex(all[k].addr)} is saved or inherited twice`);
    }
  }
  p.vmas.forEach((v, j) => {
    if (bytes[j] !== v.savedPages * PAGE_SIZE) fail(p.pid, `vmas[${j}].savedPages`, `${v.savedPages} pages listed but the Pages records carry ${bytes[j] / PAGE_SIZE}`);
    v.inherited?.forEach((g, k) => {
      const theirs = runsOf.get(g.from) ?? [];
      g.runs.forEach((r, m) => {
        if (!covered(theirs, r.addr, r.len)) fail(p.pid, `vmas[${j}].inherited[${k}].runs[${m}]`, `pid ${g.from} saved no pages at ${hex(r.addr)}-${hex(r.addr + r.len)}`);
      });
    });
  });
}

function checkFds(p: ImageProcess, i: number, fail: Fail, pipeIds: Set<number>, memfdIds: Set<number>, index: Map<number, number>, fdsOf: Map<number, Set<number>>): void {
  const seen = new Set<number>();
  p.fds.forEach((f, j) => {
    const fl = `fds[${j}]`;
    if (seen.has(f.fd)) fail(p.pid, `${fl}.fd`, `fd ${f.fd} is listed twice`);
    if (f.sameAs !== undefined) {
      if (!seen.has(f.sameAs)) fail(p.pid, `${fl}.sameAs`, `fd ${f.sameAs} is not an fd listed before it`);
    } else if (f.sharedWith) {
      const owner = index.get(f.sharedWith.pid);
      if (owner === undefined || owner >= i) fail(p.pid, `${fl}.sharedWith.pid`, `pid ${f.sharedWith.pid} is not a process listed before it`);
      if (!fdsOf.get(f.sharedWith.pid)!.has(f.sharedWith.fd)) fail(p.pid, `${fl}.sharedWith.fd`, `pid ${f.sharedWith.pid} has no fd ${f.sharedWith.fd}`);
    } else {
      if ((f.kind === 'pipe' || f.kind === 'fifo') && !pipeIds.has(f.pipe)) fail(p.pid, `${fl}.pipe`, `pipe ${f.pipe} is not in the Pipes record`);
      if (f.kind === 'memfd' && !memfdIds.has(f.memfd)) fail(p.pid, `${fl}.memfd`, `memfd ${f.memfd} is not in the Memfds record`);
      if ((f.kind === 'file' || f.kind === 'dir' || f.kind === 'chr' || f.kind === 'fifo') && !f.path.startsWith('/')) fail(p.pid, `${fl}.path`, 'not an absolute path');
    }
    seen.add(f.fd);
  });
  fdsOf.set(p.pid, seen);
  p.fds.forEach((f, j) => {
    if (f.kind !== 'epoll') return;
    f.epoll.forEach((w, k) => {
      if (!seen.has(w.fd)) fail(p.pid, `fds[${j}].epoll[${k}].fd`, `watches fd ${w.fd}, which the process does not have`);
    });
  });
}
