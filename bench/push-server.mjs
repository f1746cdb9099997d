// A fake push server for load: answers 201 and notes when each endpoint was pushed to. Its own process.
import { createServer } from 'node:http';
import { now, serve } from './lib.mjs';

let arrivals = []; // [path, at]
const server = createServer((req, res) => {
  const at = now();
  req.resume();
  req.on('end', () => {
    arrivals.push([req.url, at]);
    res.writeHead(201).end();
  });
});
server.keepAliveTimeout = 60_000;

serve({
  take: () => {
    const taken = arrivals;
    arrivals = [];
    return taken;
  },
  count: () => arrivals.length,
});
server.listen(0, '127.0.0.1', () => process.send({ ready: true, port: server.address().port }));
