// `stasis show`: a human summary of an image.
import { LoadedImage } from '../restart';
import { ImageProcess } from '../image/schema';
import { PAGE_SIZE } from '../sys/x86';

function size(bytes: number): string {
  if (bytes >= 1 << 30) return `${(bytes / (1 << 30)).toFixed(1)} GiB`;
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

export function showImage(img: LoadedImage): string {
  const lines: string[] = [];
  if (img.processes.length > 1 || img.zombies.length) {
    lines.push(`tree of ${img.processes.length} process(es) and ${img.zombies.length} zombie(s), ${img.pipes.length} pipe(s)/FIFO(s):`);
    for (const p of img.processes) lines.push(`  pid ${p.pid} ppid ${p.ppid} pgid ${p.pgid} sid ${p.sid} (${p.comm}), ${p.threads.length} thread(s)`);
    for (const z of img.zombies) lines.push(`  pid ${z.pid} ppid ${z.ppid} pgid ${z.pgid} sid ${z.sid} zombie, wait status ${z.exitStatus}`);
  }
  for (const p of img.processes) lines.push(...showProcess(img, p));
  for (const g of img.objects.ghosts ?? []) {
    const data = g.segments.reduce((n, s) => n + Buffer.byteLength(s.data, 'base64'), 0);
    lines.push(`deleted file ${g.id}: ${g.path}, ${size(g.size)} (${size(data)} of data), mode 0${g.mode.toString(8)}, owner ${g.uid}:${g.gid}`);
  }
  return lines.join('\n') + '\n';
}

function showProcess(img: LoadedImage, p: ImageProcess): string[] {
  const lines: string[] = [];
  const pageBytes = img.pages.filter((r) => r.pid === p.pid).reduce((s, r) => s + r.data.length, 0);
  lines.push(`process ${p.pid} (${p.comm}), exe ${p.mm.exe.path}`);
  lines.push(`  taken on kernel ${p.kernel}; uid ${p.creds.uid[0]} gid ${p.creds.gid[0]}; cwd ${p.cwd}`);
  lines.push(`  ${p.threads.length} thread(s), ${p.vmas.length} VMAs, ${p.fds.length} fds, ${size(pageBytes)} of saved pages`);
  for (const th of p.threads) {
    const blocked = BigInt(th.signals.blocked);
    const pending = th.signals.pending.length + (th.tid === p.pid ? p.sharedPending.length : 0);
    lines.push(`  thread ${th.tid} (${th.comm}): ${th.inSyscall !== null ? `in syscall ${th.inSyscall}` : 'in user code'}, blocked mask 0x${blocked.toString(16)}, ${pending} pending signal(s)`);
  }
  lines.push('memory:');
  for (const v of p.vmas) {
    const name = v.file?.path ?? v.name ?? '';
    const saved = v.savedPages ? `  ${size(v.savedPages * PAGE_SIZE)} saved` : '';
    lines.push(`  ${v.start.toString(16).padStart(12, '0')}-${v.end.toString(16).padStart(12, '0')} ${v.prot}${v.shared ? 's' : 'p'} ${size(v.end - v.start).padStart(9)} ${v.kind.padEnd(11)} ${name}${saved}`);
  }
  lines.push('files:');
  for (const f of p.fds) {
    const how = f.sameAs !== undefined ? `same open file as fd ${f.sameAs}` : `flags 0${f.flags.toString(8)} pos ${f.pos}`;
    lines.push(`  fd ${String(f.fd).padStart(3)} ${f.kind.padEnd(4)} ${f.path} (${how}${f.cloexec ? ', cloexec' : ''})`);
  }
  return lines;
}

/**
 * `stasis show --json`: every record's metadata, the whole tree (processes
 * parents first, the root first; zombies; pipes; memfds), the page records
 * as their address runs, and no page or memfd contents.
 */
export function imageJson(img: LoadedImage): unknown {
  return {
    source: img.source,
    root: img.process.pid,
    processes: img.processes,
    zombies: img.zombies,
    pipes: img.pipes,
    memfds: img.memfds.map((m) => ({ ...m, segments: m.segments.map((s) => ({ offset: s.offset, bytes: Buffer.byteLength(s.data, 'base64') })) })),
    pages: img.pages.map((pg) => ({ pid: pg.pid, bytes: pg.data.length, runs: pg.runs })),
  };
}
