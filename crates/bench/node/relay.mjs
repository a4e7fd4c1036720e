// What a client outside the Rust stack sees of the live feed (issue 16): a writer pushes a
// small record over HTTP (Node's fetch, i.e. undici) every `interval` ms, a reader on another
// device's WebSocket (the `ws` package) times its arrival. Both run in this process, so they
// share one clock.
//
//   node relay.mjs <base URL> <writer access token> <reader access token> <count> <interval ms>
//
// Prints one JSON line: {"n", "p50_ms", "p90_ms", "p99_ms", "max_ms"}.

import WebSocket from "ws";

const [base, writerToken, readerToken, countArg, intervalArg] = process.argv.slice(2);
const count = Number(countArg);
const interval = Number(intervalArg);
const sent = new Map();
const latencies = [];

const socket = new WebSocket(`${base.replace(/^http/, "ws")}/v1/sync/ws`);
await new Promise((resolve, reject) => {
  socket.once("error", reject);
  socket.on("message", function welcome(data) {
    const frame = JSON.parse(data);
    if (frame.type === "welcome") {
      socket.off("message", welcome);
      resolve();
    }
  });
  socket.once("open", () => socket.send(JSON.stringify({ type: "hello", access_token: readerToken })));
});

let done;
const finished = new Promise((resolve) => { done = resolve; });
socket.on("message", (data) => {
  const now = performance.now();
  const frame = JSON.parse(data);
  if (frame.type !== "changes") return;
  for (const change of frame.changes) {
    const at = sent.get(change.id);
    if (at !== undefined) {
      latencies.push(now - at);
      sent.delete(change.id);
    }
  }
  if (latencies.length >= count) done();
});

const run = Date.now();
for (let i = 0; i < count; i++) {
  const id = `node-${run}-${i}`;
  const hlc = `${String(Date.now()).padStart(15, "0")}-${String(i % 100000).padStart(5, "0")}-node`;
  const body = JSON.stringify({ mutations: [{ mutation_id: id, collection: "notes", id, op: "upsert",
    fields: { text: "x".repeat(240), n: i }, hlc }] });
  sent.set(id, performance.now());
  const response = await fetch(`${base}/v1/sync/push`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${writerToken}` },
    body,
  });
  if (!response.ok) throw new Error(`push ${i}: ${response.status} ${await response.text()}`);
  await new Promise((resolve) => setTimeout(resolve, interval));
}
await Promise.race([finished, new Promise((resolve) => setTimeout(resolve, 5000))]);
socket.close();

latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
const round = (x) => Math.round(x * 100) / 100;
console.log(JSON.stringify({ n: latencies.length, p50_ms: round(at(0.5)), p90_ms: round(at(0.9)),
  p99_ms: round(at(0.99)), max_ms: round(latencies.at(-1)) }));
