// The runner kit against the real `sitecache` binary and a real S3 server: run by
// `tests/integration/runner_kit.rs` (make test), which commits and promotes a generation and
// passes where it is:
//
//   SITECACHE_BIN          the binary under test
//   SITECACHE_TEST_URL     a prefix whose generation 1 is promoted
//   SITECACHE_TEST_FILES   how many files it holds; SITECACHE_TEST_FILE one of them (relative)
//   SITECACHE_TEST_EMPTY   a prefix with nothing promoted
//   SITECACHE_TEST_DIR     a scratch directory
//   AWS_* and SITECACHE_PATH_STYLE: the server, inherited by the binary.
//
// No imports from the network: the assertions are written out here.

import { parseResult, restore, restoreArgs } from "./mod.ts";
import { deploy } from "./example_daemon.ts";

function env(name: string): string {
  const value = Deno.env.get(name);
  if (!value) throw new Error(`${name} is not set: run this from tests/integration/runner_kit.rs`);
  return value;
}

function assert(cond: boolean, message: string): asserts cond {
  if (!cond) throw new Error(message);
}

function assertEquals<T>(actual: T, expected: T, what: string) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: ${a}, not ${e}`);
}

let scratch = 0;
function dest(): string {
  scratch += 1;
  return `${env("SITECACHE_TEST_DIR")}/dest-${scratch}`;
}

Deno.test("restores the promoted generation and returns its result line", async () => {
  const into = dest();
  const result = await restore({ url: env("SITECACHE_TEST_URL"), dest: into, timeoutMs: 20_000 });
  assert(result.ok, `not restored: ${JSON.stringify(result)}`);
  assertEquals(result.reason, "restored", "reason");
  assertEquals(result.generation, 1, "generation");
  assertEquals(result.files, Number(env("SITECACHE_TEST_FILES")), "files");
  assert(result.bytes > 0 && result.ms > 0, JSON.stringify(result));
  const file = await Deno.stat(`${into}/${env("SITECACHE_TEST_FILE")}`);
  assert(file.isFile, "the restored file");
  // A tree no Deno warmed: nothing to compare.
  assertEquals([result.runtime, result.runtimeMismatch], [null, null], "runtime");
  // Snapshotted from another directory than this one.
  assertEquals(result.cacheDirMismatch, true, "cacheDirMismatch");
});

Deno.test("nothing promoted is a result, not an exception", async () => {
  const result = await restore({ url: env("SITECACHE_TEST_EMPTY"), dest: dest() });
  assertEquals([result.ok, result.reason], [false, "no-current-generation"], "result");
  assertEquals(result.generation, null, "generation");
});

Deno.test("bad arguments are the command's invalid-arguments result", async () => {
  const result = await restore({ url: "not-a-url", dest: dest() });
  assertEquals([result.ok, result.reason], [false, "invalid-arguments"], "result");
});

Deno.test("a binary that cannot start is spawn-failed", async () => {
  const result = await restore({
    url: env("SITECACHE_TEST_URL"),
    dest: dest(),
    binary: `${env("SITECACHE_TEST_DIR")}/no-such-binary`,
  });
  assertEquals([result.ok, result.reason], [false, "spawn-failed"], "result");
});

Deno.test("a command that outlives the outer deadline is killed", async () => {
  const hang = `${env("SITECACHE_TEST_DIR")}/hang.sh`;
  await Deno.writeTextFile(hang, "#!/bin/sh\nexec sleep 60\n", { mode: 0o755 });
  const started = performance.now();
  const result = await restore({
    url: env("SITECACHE_TEST_URL"),
    dest: dest(),
    binary: hang,
    timeoutMs: 200,
    graceMs: 300,
  });
  const took = performance.now() - started;
  assertEquals([result.ok, result.reason], [false, "killed"], "result");
  assert(took < 5_000, `took ${took} ms`);
});

Deno.test("a cancelled restore is killed", async () => {
  const hang = `${env("SITECACHE_TEST_DIR")}/hang2.sh`;
  await Deno.writeTextFile(hang, "#!/bin/sh\nexec sleep 60\n", { mode: 0o755 });
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 100);
  const result = await restore({
    url: env("SITECACHE_TEST_URL"),
    dest: dest(),
    binary: hang,
    signal: controller.signal,
  });
  assertEquals(result.reason, "killed", "reason");
  assert(result.message.includes("cancelled"), result.message);
});

Deno.test("a deploy restores, then starts the site with DENO_DIR on the cache", async () => {
  const root = `${env("SITECACHE_TEST_DIR")}/daemon`;
  await Deno.mkdir(root, { recursive: true });
  const site = `${root}/site.ts`;
  await Deno.writeTextFile(
    site,
    "const dir = Deno.env.get('DENO_DIR')!;\n" +
      `const file = await Deno.stat(\`\${dir}/${env("SITECACHE_TEST_FILE")}\`);\n` +
      "console.log(JSON.stringify({ dir, restored: file.isFile }));\n",
  );
  const started = await deploy(
    {
      cacheRoot: `${root}/caches`,
      restoreTimeoutMs: 20_000,
      deno: Deno.execPath(),
      flags: ["--allow-env", "--allow-read", "--no-prompt"],
    },
    { site: "shop", url: env("SITECACHE_TEST_URL"), entry: site },
  );
  // The child's stdout is inherited; its exit code says whether it found the restored file.
  const status = await started.process.status;
  assert(started.restore.ok, JSON.stringify(started.restore));
  assert(status.success, `the site exited with ${status.code}`);
});

Deno.test("the arguments and the result line", () => {
  assertEquals(
    restoreArgs({
      url: "s3://b/p/",
      dest: "/d",
      timeoutMs: 1500.7,
      generation: 3,
      pathStyle: true,
    }),
    [
      "restore",
      "--url",
      "s3://b/p/",
      "--dest",
      "/d",
      "--timeout",
      "1500ms",
      "--generation",
      "3",
      "--path-style",
      "--runtime-version",
      Deno.version.deno,
    ],
    "args",
  );
  assertEquals(
    restoreArgs({ url: "s3://b/p/", dest: "/d", runtimeVersion: null }).includes(
      "--runtime-version",
    ),
    false,
    "no runtime version",
  );
  const line =
    '{"ok":true,"reason":"restored","generation":7,"bytes":5,"files":2,"ms":9,"message":"m"}';
  assertEquals(parseResult(`noise\n${line}\n`)?.generation, 7, "generation");
  assertEquals(parseResult("{}\nnot json\n"), null, "no result line");
});
