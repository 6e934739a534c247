// RS256 signing rate of Node `jose` (panva), for scripts/bench: the same claim set as tfe-oidc's
// tokens, a fresh jti per token, a parsed key (no per-token key parsing), one token at a time.
//
//   node jose-sign.mjs [seconds]   → one JSON line: tokens per wall second and per CPU-second
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { SignJWT } from 'jose';

const seconds = Number(process.argv[2] || 3);
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const claims = {
  iss: 'https://tfe.example.com', aud: 'vault.workload.identity',
  sub: 'organization:acme:project:Default Project:workspace:prod:run_phase:apply',
  terraform_organization_id: 'org-GRNbCjYNpBB6NEH9', terraform_organization_name: 'acme',
  terraform_project_id: 'prj-vegSA59s1XPwMr2t', terraform_project_name: 'Default Project',
  terraform_workspace_id: 'ws-mbsd5E3Ktt5Rg2Xm', terraform_workspace_name: 'prod',
  terraform_full_workspace: 'organization:acme:project:Default Project:workspace:prod',
  terraform_run_id: 'run-X3n1AUXNGWbfECsJ', terraform_run_phase: 'apply',
};
const header = { alg: 'RS256', typ: 'JWT', kid: 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs' };

async function one() {
  const iat = Math.floor(Date.now() / 1000);
  return new SignJWT({ jti: randomUUID(), ...claims, iat, nbf: iat - 5, exp: iat + 7200 })
    .setProtectedHeader(header)
    .sign(privateKey);
}

async function run(ms) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < ms) {
    await one();
    n += 1;
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  return { n, wall, cpu: (cpu.user + cpu.system) / 1e6 };
}

await run(300); // warm-up: JIT, key import cache
const r = await run(seconds * 1000);
console.log(JSON.stringify({
  impl: `jose ${(await import('jose/package.json', { with: { type: 'json' } }).catch(() => ({ default: {} }))).default.version ?? ''}`.trim(),
  node: process.version, openssl: process.versions.openssl,
  tokens: r.n, seconds: r.wall, per_s: r.n / r.wall, per_cpu_s: r.n / r.cpu,
}));
