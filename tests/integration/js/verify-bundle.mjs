// Verify a Sigstore bundle the gate wrote with sigstore-js (@sigstore/verify), as a JavaScript
// consumer holding only the gate's PEM public key would: offline, key-based, no transparency
// log, no timestamps. The key is offered under the hint cosign derives from it (base64 of the
// SHA-256 of its DER SubjectPublicKeyInfo), so a bundle whose hint is anything else fails with
// "key not found".
//
// usage: node verify-bundle.mjs NODE_MODULES_PARENT BUNDLE.json KEY.pem
// prints a JSON line {"verified": true, "hint": ...} and exits 0, or the error and exits 1.
import { createHash, createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [modulesParent, bundlePath, pemPath] = process.argv.slice(2);
// the packages live in the project's tools directory, not beside this script
const require = createRequire(join(modulesParent, 'package.json'));
const { bundleFromJSON } = require('@sigstore/bundle');
const { Verifier, toSignedEntity, toTrustMaterial } = require('@sigstore/verify');

const der = createPublicKey(readFileSync(pemPath, 'utf8')).export({ format: 'der', type: 'spki' });
const hint = createHash('sha256').update(der).digest('base64');
const emptyRoot = {
  mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
  tlogs: [],
  certificateAuthorities: [],
  ctlogs: [],
  timestampAuthorities: [],
};
const keys = { [hint]: { rawBytes: der, keyDetails: 'PKIX_ECDSA_P256_SHA_256' } };

try {
  const bundle = bundleFromJSON(JSON.parse(readFileSync(bundlePath, 'utf8')));
  const verifier = new Verifier(toTrustMaterial(emptyRoot, keys), {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 0,
  });
  verifier.verify(toSignedEntity(bundle));
  process.stdout.write(JSON.stringify({ verified: true, hint }) + '\n');
} catch (error) {
  process.stdout.write(
    JSON.stringify({ verified: false, hint, error: `${error.code ?? error.name}: ${error.message}` }) + '\n',
  );
  process.exit(1);
}
