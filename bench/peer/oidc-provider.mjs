// The peer for scripts/bench: panva's oidc-provider serving its JWKS (and discovery) over plain
// HTTP and TLS, one Node process per core (node:cluster), the way it is scaled on one machine.
//
//   PORT_PLAIN, PORT_TLS, TLS_CERT, TLS_KEY (PEM paths), WORKERS (default: cores)
//
// Its keys are two RSA-2048 keys, like tfe-oidc's JWKS (next + current). Prints "ready" once
// every worker listens.
import cluster from 'node:cluster';
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';

const workers = Number(process.env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  const keys = [0, 1].map(() => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    return { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };
  });
  let listening = 0;
  for (let i = 0; i < workers; i += 1) {
    const worker = cluster.fork({ BENCH_KEYS: JSON.stringify(keys) });
    worker.on('message', (m) => {
      if (m === 'listening' && (listening += 1) === workers) console.log('ready');
    });
  }
  const stop = () => {
    for (const w of Object.values(cluster.workers)) w.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  const { default: Provider } = await import('oidc-provider');
  const keys = JSON.parse(process.env.BENCH_KEYS);
  const plain = Number(process.env.PORT_PLAIN);
  const provider = new Provider(`http://127.0.0.1:${plain}`, { jwks: { keys } });
  const callback = provider.callback();
  let pending = 2;
  const up = () => { if ((pending -= 1) === 0) process.send('listening'); };
  http.createServer(callback).listen(plain, '127.0.0.1', up);
  https
    .createServer({ cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY) }, callback)
    .listen(Number(process.env.PORT_TLS), '127.0.0.1', up);
}
