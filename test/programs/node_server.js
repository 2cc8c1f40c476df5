// A Node.js service as users run them: HTTP on a unix socket, timers, an
// fs.watch watcher (inotify), a worker thread and the libuv threadpool kept
// busy. It logs to stdout what a test waits for; its state lives only in
// memory (request count, ticks, the worker's count, hashes done).
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const { Worker } = require('node:worker_threads');

const [sock, watched] = process.argv.slice(2);
let requests = 0, ticks = 0, hashes = 0, workerCount = 0;

setInterval(() => { ticks++; }, 5);
// The threadpool stays busy: one pbkdf2 after another.
(function hash() {
  crypto.pbkdf2('secret', 'salt', 2000, 32, 'sha256', () => { hashes++; hash(); });
})();
const worker = new Worker('const { parentPort } = require("node:worker_threads"); let n = 0; setInterval(() => parentPort.postMessage(++n), 5);', { eval: true });
worker.on('message', (n) => { workerCount = n; });
fs.watch(watched, (event, name) => console.log(`watch ${event} ${name}`));

// Each connection's end is logged once its socket is closed, so a test can
// wait until the service holds no connection from it before a checkpoint.
let closed = 0;
http.createServer((req, res) => {
  requests++;
  res.end(JSON.stringify({ pid: process.pid, requests, ticks, hashes, workerCount }) + '\n');
}).on('connection', (s) => s.on('close', () => console.log(`closed ${++closed}`)))
  .listen(sock, () => console.log('listening'));
