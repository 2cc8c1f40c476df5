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
import { isCanonical, queuedLineBytes } from '../kinds/tty';
import { udpSenderOf } from '../kinds/inet';

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
  checkUnixSockets(img, fail);
  for (const m of img.memfds) {
    let end = 0;
    for (const s of m.segments) {
      if (s.offset < end) throw new ImageError(`${src}: Memfds record: memfd ${m.id}: segments overlap or are out of order`);
      end = s.offset + base64Bytes(s.data);
    }
    if (end > m.size) throw new ImageError(`${src}: Memfds record: memfd ${m.id}: data beyond its size ${m.size}`);
  }
  const ghostIds = checkGhosts(img);

  checkTtys(img);

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

  checkMqueues(img, fail);
  checkUdpQueues(img, fail);

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

/** A datagram queued on a UDP socket is sent again by its sender: a UDP socket of the image. */
function checkUdpQueues(img: LoadedImage, fail: Fail): void {
  const udp = img.processes.flatMap((p) => p.fds.flatMap((f) => (f.kind === 'inet' && f.inet.proto === 'udp' ? [f.inet] : [])));
  for (const p of img.processes) {
    p.fds.forEach((f, j) => {
      if (f.kind !== 'inet') return;
      (f.inet.queued ?? []).forEach((d, k) => {
        if (!udpSenderOf(udp, f.inet.family, d.from)) fail(p.pid, `fds[${j}].inet.queued[${k}].from`, `no ${f.inet.family} UDP socket of the image is bound to ${d.from.addr} port ${d.from.port} to send it again`);
      });
    });
  }
}

/** System V segments: ids unique, data inside. Message queues: ids unique, messages within the queue's attributes, every fd's queue in the table. */
function checkMqueues(img: LoadedImage, fail: Fail): void {
  const queues = img.objects.mqueues ?? [];
  const ids = new Set(queues.map((q) => q.id));
  if (ids.size !== queues.length) throw new ImageError(`${img.source}: Objects record: a message queue id is listed twice`);
  for (const q of queues) {
    if (q.messages.length > q.maxmsg) throw new ImageError(`${img.source}: Objects record: message queue ${q.id} holds more than its ${q.maxmsg} messages`);
    if (q.messages.some((m) => base64Bytes(m.data) > q.msgsize)) throw new ImageError(`${img.source}: Objects record: message queue ${q.id} holds a message larger than its ${q.msgsize} bytes`);
  }
  const segments = img.objects.sysvShm ?? [];
  if (new Set(segments.map((s) => s.id)).size !== segments.length) throw new ImageError(`${img.source}: Objects record: a System V segment id is listed twice`);
  for (const s of segments) {
    let end = 0;
    for (const d of s.segments) {
      if (d.offset < end) throw new ImageError(`${img.source}: Objects record: System V segment ${s.id}: data out of order or overlapping`);
      end = d.offset + base64Bytes(d.data);
    }
    if (end > s.size) throw new ImageError(`${img.source}: Objects record: System V segment ${s.id}: data beyond its size ${s.size}`);
  }
  for (const p of img.processes) {
    p.fds.forEach((f, j) => {
      if (f.kind === 'mqueue' && !ids.has(f.mqueue)) fail(p.pid, `fds[${j}].mqueue`, `message queue ${f.mqueue} is not in the Objects record`);
    });
  }
}

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
  const segmentIds = new Set((img.objects.sysvShm ?? []).map((s) => s.id));
  p.vmas.forEach((v, j) => {
    const f = `vmas[${j}]`;
    if (v.end <= v.start) fail(p.pid, `${f}.end`, `${hex(v.end)} is not above its start ${hex(v.start)}`);
    if (v.end > USER_END) fail(p.pid, `${f}.end`, `${hex(v.end)} is outside the user address space`);
    if (v.start < prevEnd) fail(p.pid, `${f}.start`, `${hex(v.start)} overlaps the mapping before it or is out of order`);
    prevEnd = v.end;
    if (v.kind === 'file' && !v.file) fail(p.pid, `${f}.file`, 'a file mapping without its file');
    if (v.kind !== 'file' && v.file) fail(p.pid, `${f}.file`, `a ${v.kind} mapping with a file`);
    if (v.kind === 'shmem' && !v.shared) fail(p.pid, `${f}.shared`, 'shared memory mapped private');
    if (v.kind === 'shmem' && [v.memfd, v.shmem, v.sysv].filter((x) => x !== undefined).length !== 1) fail(p.pid, `${f}.shmem`, 'shared memory needs exactly one of shmem, memfd and sysv');
    if (v.sysv !== undefined && !segmentIds.has(v.sysv)) fail(p.pid, `${f}.sysv`, `System V segment ${v.sysv} is not in the Objects record`);
    if (v.kind !== 'shmem' && (v.memfd !== undefined || v.shmem !== undefined || v.sysv !== undefined)) fail(p.pid, `${f}.kind`, `a ${v.kind} mapping cannot name shared memory`);
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

/**
 * The unix table (Objects record): ids unique, every fd names one, peers,
 * listeners and senders are sockets of the table that make sense as such,
 * so the restart never wires a socket to something that is not there.
 */
function checkUnixSockets(img: LoadedImage, fail: Fail): void {
  const socks = img.objects.unix ?? [];
  const where = `${img.source}: Objects record: unix`;
  const byId = new Map(socks.map((s) => [s.id, s]));
  if (byId.size !== socks.length) throw new ImageError(`${where}: a socket id is listed twice`);
  const bad = (s: { id: number }, why: string): never => {
    throw new ImageError(`${where}: socket ${s.id}: ${why}`);
  };
  const names = new Set<string>();
  for (const s of socks) {
    if (s.name && s.acceptedFrom === undefined && !s.external) {
      const key = JSON.stringify(s.name);
      if (names.has(key)) bad(s, 'its name is bound by another socket of the table too');
      names.add(key);
    }
    if (s.file && !(s.name && 'path' in s.name)) bad(s, 'a socket file without a path');
    if (s.external) {
      if (s.queue.length || s.peer !== undefined || s.state !== 'connected') bad(s, 'an external socket is connected, with no peer or queue of its own');
      continue;
    }
    if ((s.state === 'connected') !== (s.peer !== undefined)) bad(s, 'a peer exactly when connected');
    if ((s.state === 'listening') !== (s.backlog !== undefined) || (s.state === 'listening' && !s.name)) bad(s, 'a listening socket has a name and a backlog, and only it');
    const peer = s.peer !== undefined ? byId.get(s.peer) : undefined;
    if (s.peer !== undefined && (!peer || peer.external || peer.type !== s.type || peer.state === 'listening' || peer.id === s.id)) bad(s, `peer ${s.peer} is not another socket of its type in the table`);
    if (s.type !== 'dgram' && peer && peer.peer !== s.id) bad(s, 'a stream or seqpacket connection goes both ways');
    if (s.type === 'dgram' && peer && peer.peer !== s.id && !peer.name) bad(s, 'connected one way to an unnamed datagram socket');
    if (s.acceptedFrom !== undefined) {
      if (s.type === 'dgram' || !peer || !s.name || peer.acceptedFrom !== undefined) bad(s, 'an accepted connection is a named stream or seqpacket socket with an unaccepted peer');
      const l = s.acceptedFrom >= 0 ? byId.get(s.acceptedFrom) : undefined;
      if (s.acceptedFrom >= 0 && (!l || l.state !== 'listening' || l.type !== s.type || JSON.stringify(l.name) !== JSON.stringify(s.name))) bad(s, `accepted from ${s.acceptedFrom}, which is not a listening socket of its type and name`);
      if (s.acceptedFrom < 0 && !('abstract' in s.name!)) bad(s, 'only an abstract name can be listened on again for a while');
    } else if (s.type !== 'dgram' && peer && (s.name || peer.name) && peer.acceptedFrom === undefined) {
      bad(s, 'a named connection must say which end was accepted');
    }
    if (s.type === 'stream' && s.queue.length > 1) bad(s, 'a stream socket queues one run of bytes');
    if (s.type !== 'dgram' && s.queue.length && !peer) bad(s, 'data queued without a peer to send it');
    for (const q of s.queue) {
      if (q.from === undefined) continue;
      const from = byId.get(q.from);
      if (s.type !== 'dgram' || !from || from.type !== 'dgram' || from.external || !from.name || from.acceptedFrom !== undefined || (!s.name && (s.peer !== q.from || from.peer !== s.id))) bad(s, `a queued datagram from ${q.from}, which cannot send it here`);
    }
    if (s.type === 'dgram' && !s.name && s.queue.some((q) => q.from === undefined) && !(peer && peer.peer === s.id && !peer.name)) bad(s, 'datagrams queued on an unnamed socket without its socketpair peer');
  }
  for (const p of img.processes) {
    p.fds.forEach((f, j) => {
      if (f.kind === 'unix' && f.sameAs === undefined && !f.sharedWith && !byId.has(f.sock)) fail(p.pid, `fds[${j}].sock`, `unix socket ${f.sock} is not in the Objects record`);
    });
  }
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

/** Terminals: every id named exists once; sessions and foreground groups are the tree's; an external one has no master. */
function checkTtys(img: LoadedImage): void {
  const ttys = img.objects.ttys ?? [];
  const src = img.source;
  const byId = new Map(ttys.map((t) => [t.id, t]));
  if (byId.size !== ttys.length) throw new ImageError(`${src}: Objects record: a tty id is listed twice`);
  const procs = new Map(img.processes.map((p) => [p.pid, p]));
  for (const t of ttys) {
    const bad = (why: string): never => { throw new ImageError(`${src}: Objects record: tty ${t.id}: ${why}`); };
    if (t.external) {
      if (t.session) bad('an external terminal names a session');
      if (t.foreground && !img.processes.some((p) => p.pgid === t.foreground && p.ctty === t.id)) bad(`foreground group ${t.foreground} is no group of a process it controls`);
      continue;
    }
    if (!t.termios) bad('a pty without its termios');
    if (t.lines || t.partial !== undefined) {
      if (!isCanonical(t.termios!)) bad('lines queued for a slave that is not in canonical mode');
      if (t.input) bad('both raw input and canonical lines queued');
      const size = queuedLineBytes(t);
      if (size > 4095) bad(`${size} bytes of queued lines: more than a terminal holds`);
    }
    if (t.session) {
      const leader = procs.get(t.session);
      if (!leader || leader.sid !== leader.pid || leader.ctty !== t.id) bad(`session ${t.session} is not led by a process of the image with it as controlling terminal`);
    }
    if (t.foreground && !img.processes.some((p) => p.pgid === t.foreground && p.sid === t.session)) bad(`foreground group ${t.foreground} is no group of its session`);
    if (!t.session && t.foreground) bad('a foreground group without a session');
  }
  for (const p of img.processes) {
    const at = recordLabel(src, img.recordOf.get(p.pid) ?? 0, RecordType.Process, p.pid);
    if (p.ctty !== undefined) {
      const t = byId.get(p.ctty);
      if (!t) throw new ImageError(`${at}: field ctty: tty ${p.ctty} is not in the Objects record`);
      if (!t.external && t.session !== p.sid) throw new ImageError(`${at}: field ctty: tty ${p.ctty} controls session ${t.session}, not ${p.sid}`);
    }
    p.fds.forEach((f, j) => {
      if (f.kind !== 'tty') return;
      const t = byId.get(f.tty);
      if (!t) throw new ImageError(`${at}: field fds[${j}].tty: tty ${f.tty} is not in the Objects record`);
      if (t.external && f.side === 'master') throw new ImageError(`${at}: field fds[${j}].side: the master of an external terminal`);
      if (f.side === 'ctty' && p.ctty !== f.tty) throw new ImageError(`${at}: field fds[${j}].tty: /dev/tty of a terminal that is not its controlling one`);
    });
  }
}
