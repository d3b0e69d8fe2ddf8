// Render one of @hashicorp/consul-api-double's response templates with fixed inputs.
// Usage: node render_double.js PACKAGE_DIR URL_PATH  ->  the JSON body on stdout.
// The templates are JavaScript template literals that call faker (`fake.*`), `range`,
// `env` and `location`; faker is replaced by fixed values so the shape is reproducible.
"use strict";
const fs = require("fs");
const path = require("path");
const [pkg, urlPath] = process.argv.slice(2);
const file = path.join(pkg, urlPath.replace(/\/[^/]+$/, "/_"));
const text = fs.readFileSync(fs.existsSync(path.join(pkg, urlPath)) &&
  fs.statSync(path.join(pkg, urlPath)).isFile() ? path.join(pkg, urlPath) : file, "utf8");
const fixed = { number: () => 1, randomize: (a) => a[0], boolean: () => false };
function fakeProxy() {
  return new Proxy(function () { return "x"; }, {
    get: (_t, prop) => (prop in fixed ? fixed[prop] : fakeProxy()),
  });
}
const fake = fakeProxy();
const range = (n) => Array.from({ length: Number(n) }, (_v, i) => i);
const env = (name, dflt) => ({ CONSUL_NODE_COUNT: 1, CONSUL_TAG_COUNT: 1, CONSUL_CHECK_COUNT: 1,
  CONSUL_UPSTREAM_COUNT: 0, CONSUL_EXPOSED_COUNT: 0 })[name] ?? dflt;
const location = { pathname: urlPath, search: {} };
const body = eval("`" + text + "`");
process.stdout.write(JSON.stringify(JSON.parse(body)));
