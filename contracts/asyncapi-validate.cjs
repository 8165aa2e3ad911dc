// Validates an AsyncAPI document with the reference parser, @asyncapi/parser.
// Usage: node asyncapi-validate.cjs <document.json> <dir holding node_modules/@asyncapi/parser>
// Prints every diagnostic, then one line per channel: `channel <address> <message names>`.
// Exit codes: 0 valid, 1 invalid, 3 the parser is not installed.
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [documentPath, toolsDir] = process.argv.slice(2);
let Parser;
try {
  ({ Parser } = createRequire(path.resolve(toolsDir, 'package.json'))('@asyncapi/parser'));
} catch (error) {
  console.error(`@asyncapi/parser is not installed in ${toolsDir} (${error.code}): run \`bash contracts/setup.sh\``);
  process.exit(3);
}

(async () => {
  const { document, diagnostics } = await new Parser().parse(fs.readFileSync(documentPath, 'utf8'));
  const severities = ['error', 'warning', 'information', 'hint'];
  for (const d of diagnostics) {
    console.log(`${severities[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
  }
  if (!document || diagnostics.some((d) => d.severity === 0)) {
    process.exit(1);
  }
  for (const channel of document.channels().all()) {
    const names = channel.messages().all().map((m) => `${m.name()}@${m.id()}`);
    console.log(`channel ${channel.address()} ${names.join(' ')}`);
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
