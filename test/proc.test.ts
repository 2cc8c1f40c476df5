import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { spawn } from "child_process";
import {
  parseMaps,
  parseSmaps,
  readVmas,
  readMaps,
  parseStat,
  readStat,
  parseStatus,
  readStatus,
  parseLimits,
  readLimits,
  parseFdinfo,
  readFdinfo,
  parseAuxv,
  readAuxv,
  listFds,
  listThreads,
  listChildren,
  parseSigset,
  sigsetToList,
  parsePagemapEntry,
  readPagemap,
  RLIM_INFINITY,
  PAGE_SIZE,
} from "../src/proc";

// Fixtures below were captured from /proc on a 6.18 x86-64 kernel (trimmed).

const SMAPS_KEYS = `Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   8 kB
Shared_Clean:          0 kB
Private_Dirty:         8 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
THPeligible:           0
`;

const SMAPS = `55f0977f9000-55f0977fb000 r--p 00000000 fe:00 2146424                    /tmp/sp ace/sl) (eep
${SMAPS_KEYS}VmFlags: rd mr mw me 
55f0977fb000-55f097800000 r-xp 00002000 fe:00 2146424                    /tmp/sp ace/sl) (eep
${SMAPS_KEYS}VmFlags: rd ex mr mw me 
561a1e700000-561a1e88f000 rw-p 00000000 00:00 0                          [heap]
${SMAPS_KEYS}VmFlags: rd wr mr mw me ac 
7f4406e3a000-7f4406e3c000 rw-p 00000000 00:00 0 
${SMAPS_KEYS}VmFlags: rd wr mr mw me ac 
7fe690c70000-7fe690c72000 rw-s 00000000 fe:00 2146435                    /tmp/del me.bin (deleted)
${SMAPS_KEYS}VmFlags: rd wr sh mr mw me ms 
7f4406e3c000-7f4406e40000 r--p 00000000 00:00 0                          [vvar]
${SMAPS_KEYS}VmFlags: rd mr pf io de dd sd 
7f4406e40000-7f4406e42000 r--p 00000000 00:00 0                          [vvar_vclock]
${SMAPS_KEYS}VmFlags: rd mr pf io de dd sd 
7f4406e42000-7f4406e44000 r-xp 00000000 00:00 0                          [vdso]
${SMAPS_KEYS}VmFlags: rd ex mr mw me de sd 
7ffe4a584000-7ffe4a5a5000 rw-p 00000000 00:00 0                          [stack]
${SMAPS_KEYS}VmFlags: rd wr mr mw me gd ac 
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
${SMAPS_KEYS}VmFlags: ex 
`;

// maps = smaps headers only
const MAPS = SMAPS.split("\n")
  .filter((l) => /^[0-9a-f]+-/.test(l))
  .join("\n") + "\n";

test("parseSmaps: fields, spaces in paths, deleted, vsyscall dropped", () => {
  const v = parseSmaps(SMAPS);
  assert.equal(v.length, 9, "vsyscall must be dropped");
  assert.ok(!v.some((x) => x.path === "[vsyscall]"));

  assert.deepEqual(v[0], {
    start: 0x55f0977f9000,
    end: 0x55f0977fb000,
    prot: { read: true, write: false, exec: false },
    shared: false,
    offset: 0,
    dev: "fe:00",
    inode: 2146424,
    path: "/tmp/sp ace/sl) (eep",
    deleted: false,
    vmFlags: ["rd", "mr", "mw", "me"],
  });
  assert.equal(v[1].offset, 0x2000);
  assert.equal(v[1].prot.exec, true);

  const anon = v[3];
  assert.equal(anon.path, "");
  assert.equal(anon.inode, 0);
  assert.equal(anon.dev, "00:00");

  const del = v[4];
  assert.equal(del.path, "/tmp/del me.bin (deleted)");
  assert.equal(del.deleted, true);
  assert.equal(del.shared, true);
  assert.deepEqual(del.vmFlags, ["rd", "wr", "sh", "mr", "mw", "me", "ms"]);

  assert.deepEqual(
    v.map((x) => x.path).filter((p) => p.startsWith("[")),
    ["[heap]", "[vvar]", "[vvar_vclock]", "[vdso]", "[stack]"],
  );
  const stack = v.find((x) => x.path === "[stack]")!;
  assert.ok(stack.vmFlags.includes("gd"));
});

test("parseMaps: same vmas as smaps but without flags", () => {
  const m = parseMaps(MAPS);
  const s = parseSmaps(SMAPS);
  assert.equal(m.length, s.length);
  for (let i = 0; i < m.length; i++) {
    assert.deepEqual(m[i], { ...s[i], vmFlags: [] });
  }
  assert.throws(() => parseMaps("garbage line\n"));
});

test("parseMaps: accepts Buffer and anonymous line without trailing space", () => {
  const v = parseMaps(Buffer.from("7f0000000000-7f0000001000 ---p 00000000 00:00 0\n"));
  assert.equal(v.length, 1);
  assert.equal(v[0].path, "");
  assert.deepEqual(v[0].prot, { read: false, write: false, exec: false });
});

const STAT =
  "2718 (sl) (eep) S 2717 2672 1864 0 -1 4194304 127 0 0 0 0 0 0 0 20 0 1 0 111169 2990080 413 " +
  "18446744073709551615 94491822239744 94491822257673 140726164226592 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 " +
  "94491822271760 94491822273024 94492634640384 140726164232908 140726164232932 140726164232932 " +
  "140726164234211 0\n";

test("parseStat: comm with ') (' and spaces, field positions", () => {
  const s = parseStat(STAT);
  assert.deepEqual(s, {
    pid: 2718,
    comm: "sl) (eep",
    state: "S",
    ppid: 2717,
    pgrp: 2672,
    session: 1864,
    ttyNr: 0,
    tpgid: -1,
    flags: 4194304,
    nice: 0,
    numThreads: 1,
    rtPriority: 0,
    policy: 0,
    startTime: 111169,
    startCode: 94491822239744,
    endCode: 94491822257673,
    startStack: 140726164226592,
    startData: 94491822271760,
    endData: 94491822273024,
    startBrk: 94492634640384,
    argStart: 140726164232908,
    argEnd: 140726164232932,
    envStart: 140726164232932,
    envEnd: 140726164234211,
    exitCode: 0,
  });
  assert.equal(parseStat("5 (a ) b)) Z 1 5 5" + " 0".repeat(49)).comm, "a ) b)");
  // nice (19), rt_priority (40) and policy (41) of a SCHED_FIFO 10 task at nice -3
  const rt = parseStat("7 (rt) S" + [...Array(38)].map((_, i) => ` ${[19, 40, 41].includes(i + 4) ? { 19: -3, 40: 10, 41: 1 }[i + 4] : 0}`).join(""));
  assert.deepEqual([rt.nice, rt.rtPriority, rt.policy], [-3, 10, 1]);
});

const STATUS = `Name:	cat
Umask:	0027
State:	S (sleeping)
Tgid:	2558
Ngid:	0
Pid:	2560
PPid:	2555
TracerPid:	77
Uid:	1000	1001	1002	1003
Gid:	100	101	102	103
FDSize:	256
Groups:	4 24 27 
NStgid:	2558	12
NSpid:	2560	14
Threads:	3
SigQ:	2/96365
SigPnd:	0000000000000100
ShdPnd:	0000000000004000
SigBlk:	0000000000010000
SigIgn:	0000000000001000
SigCgt:	0000000180004a02
CapInh:	0000000000000000
CapPrm:	000001fffeffffff
CapEff:	000001fffeffffff
CapBnd:	000001fffeffffff
CapAmb:	0000000000000000
NoNewPrivs:	1
Seccomp:	2
Seccomp_filters:	1
Cpus_allowed_list:	0-1
`;

test("parseStatus: ids, sigsets, caps, NSpid", () => {
  const s = parseStatus(STATUS);
  assert.equal(s.name, "cat");
  assert.equal(s.umask, 0o027);
  assert.equal(s.state, "S");
  assert.equal(s.tgid, 2558);
  assert.equal(s.pid, 2560);
  assert.equal(s.ppid, 2555);
  assert.equal(s.tracerPid, 77);
  assert.deepEqual(s.uid, [1000, 1001, 1002, 1003]);
  assert.deepEqual(s.gid, [100, 101, 102, 103]);
  assert.deepEqual(s.groups, [4, 24, 27]);
  assert.equal(s.threads, 3);
  assert.deepEqual(s.sigQ, { queued: 2, limit: 96365 });
  assert.equal(s.sigPnd, 0x100n);
  assert.deepEqual(sigsetToList(s.sigPnd), [9]);
  assert.equal(s.shdPnd, 0x4000n);
  assert.equal(s.sigBlk, 0x10000n);
  assert.equal(s.sigIgn, 0x1000n);
  assert.deepEqual(sigsetToList(s.sigCgt), [2, 10, 12, 15, 32, 33]);
  assert.equal(s.capEff, 0x1fffeffffffn);
  assert.equal(s.capAmb, 0n);
  assert.equal(s.noNewPrivs, 1);
  assert.equal(s.seccomp, 2);
  assert.deepEqual(s.nsPid, [2560, 14]);
  assert.equal(s.raw["Cpus_allowed_list"], "0-1");
  assert.equal(s.raw["FDSize"], "256");
});

test("parseStatus: empty Groups and missing required field", () => {
  const s = parseStatus(STATUS.replace("Groups:\t4 24 27 ", "Groups:\t "));
  assert.deepEqual(s.groups, []);
  assert.throws(() => parseStatus(STATUS.replace(/^Umask:.*\n/m, "")), /Umask/);
});

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             96365                96365                processes 
Max open files            20000                20000                files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       96365                96365                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
`;

test("parseLimits: names with spaces, unlimited, empty units", () => {
  const l = parseLimits(LIMITS);
  assert.equal(l.length, 16);
  assert.deepEqual(
    l.map((x) => x.resource),
    [...Array(16).keys()],
  );
  assert.deepEqual(l[0], { name: "Max cpu time", resource: 0, soft: RLIM_INFINITY, hard: RLIM_INFINITY });
  assert.deepEqual(l[3], { name: "Max stack size", resource: 3, soft: 8388608n, hard: RLIM_INFINITY });
  assert.deepEqual(l[7], { name: "Max open files", resource: 7, soft: 20000n, hard: 20000n });
  assert.deepEqual(l[13], { name: "Max nice priority", resource: 13, soft: 0n, hard: 0n });
  assert.deepEqual(l[14], { name: "Max realtime priority", resource: 14, soft: 0n, hard: 0n });
  assert.equal(l[15].soft, 0xffffffffffffffffn);
});

test("parseFdinfo: regular, eventfd, epoll with repeated keys", () => {
  const reg = parseFdinfo("pos:\t1234\nflags:\t0100002\nmnt_id:\t24\nino:\t3\n");
  assert.equal(reg.pos, 1234);
  assert.equal(reg.flags, 0o100002);
  assert.equal(reg.mntId, 24);
  assert.equal(reg.ino, 3);

  const ev = parseFdinfo(
    "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\neventfd-count:                3\neventfd-id: 1\neventfd-semaphore: 0\n",
  );
  assert.equal(ev.flags, 0o2000002);
  assert.equal(ev.raw["eventfd-count"], "3");
  assert.equal(ev.raw["eventfd-semaphore"], "0");

  const ep = parseFdinfo(
    "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n" +
      "tfd:        6 events:       1c data:                6  pos:0 ino:14fe sdev:f\n" +
      "tfd:        5 events:       19 data:                5  pos:0 ino:14fe sdev:f\n",
  );
  assert.ok(ep.raw["tfd"].startsWith("6 events:"), "first tfd kept");
  assert.equal(ep.lines.filter((l) => l.startsWith("tfd:")).length, 2);
  assert.equal(ep.lines.length, 6);

  const old = parseFdinfo("pos:\t0\nflags:\t02\nmnt_id:\t9\n");
  assert.equal(old.ino, undefined);
});

test("parseAuxv: stops after AT_NULL, little-endian u64 pairs", () => {
  const pairs: Array<[bigint, bigint]> = [
    [33n, 0x7ffd12345000n], // AT_SYSINFO_EHDR
    [6n, 4096n], // AT_PAGESZ
    [25n, 0xffffffffffffff00n], // value needing all 64 bits
    [0n, 0n], // AT_NULL
    [99n, 1n], // trailing garbage must be ignored
  ];
  const buf = Buffer.alloc(pairs.length * 16);
  pairs.forEach(([t, v], i) => {
    buf.writeBigUInt64LE(t, i * 16);
    buf.writeBigUInt64LE(v, i * 16 + 8);
  });
  const a = parseAuxv(buf);
  assert.deepEqual(
    a,
    pairs.slice(0, 4).map(([type, value]) => ({ type, value })),
  );
  // truncated input: no partial pair
  assert.equal(parseAuxv(buf.subarray(0, 40)).length, 2);
});

test("parseSigset / sigsetToList", () => {
  assert.equal(parseSigset("0000000000000000"), 0n);
  assert.equal(parseSigset(" 8000000000000001\n"), 0x8000000000000001n);
  assert.deepEqual(sigsetToList(0x8000000000000001n), [1, 64]);
  assert.deepEqual(sigsetToList(0n), []);
  assert.deepEqual(sigsetToList(parseSigset("0000000000004002")), [2, 15]);
  assert.throws(() => parseSigset("xyz"));
});

test("parsePagemapEntry: bits", () => {
  const e = parsePagemapEntry((1n << 63n) | (1n << 61n) | (1n << 56n) | 0x12345n);
  assert.deepEqual(e, { present: true, swapped: false, file: true, exclusive: true, softDirty: false, pfn: 0x12345 });
  const sw = parsePagemapEntry((1n << 62n) | (1n << 55n) | 0x3fn);
  assert.equal(sw.present, false);
  assert.equal(sw.swapped, true);
  assert.equal(sw.softDirty, true);
  assert.equal(sw.pfn, 0);
  assert.deepEqual(parsePagemapEntry(0n), {
    present: false,
    swapped: false,
    file: false,
    exclusive: false,
    softDirty: false,
    pfn: 0,
  });
});

// ---------------------------------------------------------------- live /proc/self

test("live: readVmas has a [stack] vma with gd and agrees with readMaps", () => {
  const v = readVmas(process.pid);
  const stack = v.find((x) => x.path === "[stack]");
  assert.ok(stack, "no [stack] vma");
  assert.ok(stack.vmFlags.includes("gd"), `stack flags: ${stack.vmFlags.join(" ")}`);
  assert.ok(stack.prot.read && stack.prot.write);
  assert.ok(!v.some((x) => x.path === "[vsyscall]"));
  for (let i = 1; i < v.length; i++) assert.ok(v[i - 1].end <= v[i].start, "sorted, disjoint");
  assert.ok(v.every((x) => x.vmFlags.length > 0));
  // maps and smaps should list the same ranges (modulo churn from our own allocations)
  const m = readMaps("self");
  assert.ok(m.some((x) => x.start === stack.start && x.end === stack.end));
});

test("live: stat and status of self", () => {
  const st = readStat(process.pid);
  assert.equal(st.pid, process.pid);
  assert.equal(st.ppid, process.ppid);
  assert.ok(st.numThreads >= 1);
  assert.ok(st.startStack > 0 && st.argStart < st.argEnd);

  const s = readStatus(process.pid);
  assert.equal(s.tgid, process.pid);
  assert.equal(s.pid, process.pid);
  assert.equal(s.ppid, process.ppid);
  assert.equal(s.uid[0], process.getuid!());
  assert.equal(s.gid[0], process.getgid!());
  assert.equal(s.nsPid[0], process.pid);
  assert.equal(s.umask, process.umask());
  assert.equal(s.threads, st.numThreads);
});

test("live: limits, auxv, threads", () => {
  const l = readLimits(process.pid);
  assert.equal(l.length, 16);
  assert.ok(l.find((x) => x.resource === 7)!.soft > 0n);

  const a = parseAuxv(readAuxv(process.pid));
  assert.equal(a[a.length - 1].type, 0n);
  assert.equal(a.find((x) => x.type === 6n)?.value, 4096n); // AT_PAGESZ

  const t = listThreads(process.pid);
  assert.ok(t.includes(process.pid));
  assert.deepEqual(t, [...t].sort((x, y) => x - y));
});

test("live: listFds and readFdinfo on a file we opened", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "stasis proc "));
  const file = path.join(dir, "x y");
  fs.writeFileSync(file, "hello world");
  const fd = fs.openSync(file, "r");
  try {
    fs.readSync(fd, Buffer.alloc(5), 0, 5, null);
    const fds = listFds(process.pid);
    assert.deepEqual(fds.map((f) => f.fd), [...fds.map((f) => f.fd)].sort((x, y) => x - y));
    const mine = fds.find((f) => f.fd === fd);
    assert.equal(mine?.target, file);

    const info = readFdinfo(process.pid, fd);
    assert.equal(info.pos, 5);
    assert.equal(info.flags & 3, fs.constants.O_RDONLY);
    assert.equal(info.ino, fs.fstatSync(fd).ino);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true });
  }
});

test("live: listChildren sees a spawned child", async () => {
  const child = spawn("sleep", ["10"], { stdio: "ignore" });
  try {
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", () => resolve());
      child.once("error", reject);
    });
    assert.ok(listChildren(process.pid).includes(child.pid!));
  } finally {
    child.kill("SIGKILL");
    await new Promise((r) => child.once("exit", r));
  }
});

test("live: readPagemap over the stack finds a present page", () => {
  const stack = readVmas("self").find((x) => x.path === "[stack]")!;
  const pm = readPagemap(process.pid, stack.start, stack.end);
  assert.equal(pm.length, (stack.end - stack.start) / PAGE_SIZE);
  const present = Array.from(pm, parsePagemapEntry).filter((e) => e.present);
  assert.ok(present.length > 0);
  assert.ok(present.every((e) => !e.file), "stack pages are private anon");
  assert.equal(readPagemap("self", stack.start, stack.start).length, 0);
  assert.throws(() => readPagemap("self", stack.start + 1, stack.end), RangeError);
});
