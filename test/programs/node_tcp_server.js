// A Node.js HTTP service on TCP 127.0.0.1 (a port the kernel picks), with
// keep-alive connections held open as long as clients want. Its state lives
// only in memory: the request count. Logs `listening PORT`.
'use strict';
const http = require('node:http');

let requests = 0;
const server = http.createServer((req, res) => {
  requests++;
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ pid: process.pid, requests, url: req.url, body }));
  });
});
// Idle keep-alive connections stay open across a checkpoint however long it takes.
server.keepAliveTimeout = 0;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
