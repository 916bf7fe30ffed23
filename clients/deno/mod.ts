/**
 * sitecache's runner kit for Deno: restores a site's module cache with `sitecache restore`
 * before the site starts, bounded in time, and never throws.
 *
 * A Deno daemon that starts sites (on a deploy request, a wake-up) calls {@linkcode restore}
 * first, then starts the site process with `DENO_DIR` set to `dest`, whatever the result says:
 * a cache that could not be restored costs only the downloads it would have saved.
 *
 * ```ts
 * import { restore } from "./mod.ts";
 *
 * const result = await restore({ url: "s3://site-caches/shop/", dest: "/deno-dirs/shop" });
 * console.log(JSON.stringify({ event: "sitecache_restore", ...result }));
 * ```
 *
 * Permissions: `--allow-run` (the binary), `--allow-env` (what the binary and the AWS
 * configuration read).
 *
 * @module
 */

/** The result line of `sitecache restore` (docs/runner.md, "The result line"). */
export interface RestoreResult {
  /** The verified cache is in place at `dest`. */
  ok: boolean;
  /**
   * `restored`, a reason of `sitecache restore` (`no-current-generation`, `timeout`, …), or one
   * of the kit's own: `spawn-failed` (the binary could not be started), `killed` (it outlived
   * the outer deadline), `no-result` (it printed no result line).
   */
  reason: string;
  /** The generation restored; `null` on failure. */
  generation: number | null;
  /** Archive bytes downloaded. */
  bytes: number;
  /** Regular files restored. */
  files: number;
  /** Wall time in milliseconds, as the command measured it (the kit's own for its reasons). */
  ms: number;
  /** What happened, in words. */
  message: string;
  /** The Deno version that warmed the generation, when its manifest records it. */
  runtime: string | null;
  /**
   * Whether this Deno differs from the one that warmed it (`null` when unknown): Deno then
   * discards the generation's V8 code cache on its first start.
   */
  runtimeMismatch: boolean | null;
  /**
   * Whether `dest` differs from where the generation was warmed (`null` when unknown): Deno's code
   * cache of npm packages applies only there.
   */
  cacheDirMismatch: boolean | null;
  /** The end of what the command wrote on stderr (its warnings), at most 4 KiB. */
  stderr: string;
}

/** What to restore, and how long it may take. */
export interface RestoreOptions {
  /** The SiteCache's `status.url`: `s3://BUCKET/PREFIX/`. */
  url: string;
  /** The directory to restore into: the site's `DENO_DIR`. */
  dest: string;
  /** The deadline of the whole restore in milliseconds (`--timeout`); default 8000. */
  timeoutMs?: number;
  /**
   * How long past `timeoutMs` the process may run before it is killed (the command enforces
   * its own deadline; this guards against the unforeseen); default 3000.
   */
  graceMs?: number;
  /** A retained generation instead of the promoted one (`--generation`). */
  generation?: number;
  /** The `sitecache` binary; default `SITECACHE_BIN`, else `sitecache` on `PATH`. */
  binary?: string;
  /** S3 endpoint (`--endpoint`); default the AWS environment's. */
  endpoint?: string;
  /** Region (`--region`). */
  region?: string;
  /** Path-style addressing (`--path-style`), as MinIO and most self-hosted stores need. */
  pathStyle?: boolean;
  /**
   * The Deno version the site will run with (`--runtime-version`); default this process's own,
   * `Deno.version.deno`. `null` leaves it out.
   */
  runtimeVersion?: string | null;
  /** More environment for the command (credentials, `AWS_REGION`, …), over the daemon's own. */
  env?: Record<string, string>;
  /** Stops the restore early (the process is killed, the result is `killed`). */
  signal?: AbortSignal;
}

/** The most of stderr a result keeps. */
const STDERR_KEPT = 4096;

/** The arguments of `sitecache restore` for `options`. */
export function restoreArgs(options: RestoreOptions): string[] {
  const timeoutMs = options.timeoutMs ?? 8000;
  const args = [
    "restore",
    "--url",
    options.url,
    "--dest",
    options.dest,
    "--timeout",
    `${Math.max(1, Math.floor(timeoutMs))}ms`,
  ];
  if (options.generation !== undefined) {
    args.push("--generation", String(options.generation));
  }
  if (options.endpoint) args.push("--endpoint", options.endpoint);
  if (options.region) args.push("--region", options.region);
  if (options.pathStyle) args.push("--path-style");
  const runtime = options.runtimeVersion === undefined ? Deno.version.deno : options.runtimeVersion;
  if (runtime) args.push("--runtime-version", runtime);
  return args;
}

/**
 * The result line in `stdout`: its last line that parses as a result. `null` when there is none.
 */
export function parseResult(stdout: string): Omit<RestoreResult, "stderr"> | null {
  const lines = stdout.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
  for (const line of lines.reverse()) {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      continue;
    }
    if (
      typeof value === "object" && value !== null &&
      typeof (value as { ok?: unknown }).ok === "boolean" &&
      typeof (value as { reason?: unknown }).reason === "string"
    ) {
      const v = value as Record<string, unknown>;
      const num = (x: unknown) => (typeof x === "number" ? x : 0);
      const flag = (x: unknown) => (typeof x === "boolean" ? x : null);
      return {
        ok: v.ok as boolean,
        reason: v.reason as string,
        generation: typeof v.generation === "number" ? v.generation : null,
        bytes: num(v.bytes),
        files: num(v.files),
        ms: num(v.ms),
        message: typeof v.message === "string" ? v.message : "",
        runtime: typeof v.runtime === "string" ? v.runtime : null,
        runtimeMismatch: flag(v.runtimeMismatch),
        cacheDirMismatch: flag(v.cacheDirMismatch),
      };
    }
  }
  return null;
}

/**
 * Runs `sitecache restore` for `options` and returns its result. Never throws and never takes
 * longer than `timeoutMs + graceMs`: every failure, the kit's own included, is a result whose
 * `ok` is false.
 */
export async function restore(options: RestoreOptions): Promise<RestoreResult> {
  const started = performance.now();
  const timeoutMs = options.timeoutMs ?? 8000;
  const graceMs = options.graceMs ?? 3000;
  const failed = (reason: string, message: string, stderr = ""): RestoreResult => ({
    ok: false,
    reason,
    generation: null,
    bytes: 0,
    files: 0,
    ms: Math.round(performance.now() - started),
    message,
    runtime: null,
    runtimeMismatch: null,
    cacheDirMismatch: null,
    stderr,
  });
  const binary = options.binary ?? Deno.env.get("SITECACHE_BIN") ?? "sitecache";
  const outer = AbortSignal.timeout(timeoutMs + graceMs);
  const signal = options.signal ? AbortSignal.any([outer, options.signal]) : outer;
  let output: Deno.CommandOutput;
  try {
    const command = new Deno.Command(binary, {
      args: restoreArgs(options),
      env: options.env,
      stdin: "null",
      // output() reads both pipes concurrently: neither can fill up and block the command.
      stdout: "piped",
      stderr: "piped",
      signal,
    });
    output = await command.output();
  } catch (err) {
    return failed("spawn-failed", `could not run ${binary}: ${err}`);
  }
  const decoder = new TextDecoder();
  const stderrText = decoder.decode(output.stderr);
  const stderr = stderrText.length > STDERR_KEPT ? stderrText.slice(-STDERR_KEPT) : stderrText;
  if (signal.aborted) {
    const why = options.signal?.aborted
      ? "the restore was cancelled"
      : `sitecache restore did not exit within ${timeoutMs + graceMs} ms`;
    return failed("killed", why, stderr);
  }
  const result = parseResult(decoder.decode(output.stdout));
  if (result === null) {
    const how = output.signal ? `was killed by ${output.signal}` : `exited with ${output.code}`;
    return failed("no-result", `sitecache restore ${how} without a result line`, stderr);
  }
  return { ...result, stderr };
}
