/**
 * A runner daemon's deploy handler with sitecache: on `POST /deploy` it restores the site's
 * module cache, then starts the site with `DENO_DIR` pointing at it, whatever the restore said.
 * The shape of the seed's runner, cut down to what concerns the cache.
 *
 * ```sh
 * deno run --allow-net --allow-run --allow-env --allow-read --allow-write example_daemon.ts
 * curl -X POST localhost:8000/deploy -d '{"site":"shop","url":"s3://site-caches/shop/","entry":"/sites/shop/main.ts"}'
 * ```
 *
 * @module
 */

import { restore, type RestoreResult } from "./mod.ts";

/** What a deploy asks for. */
export interface Deploy {
  /** The site's name: its `DENO_DIR` is `<cacheRoot>/<site>`. */
  site: string;
  /** The SiteCache's `status.url`. */
  url: string;
  /** The site's entry point (a path or URL Deno runs). */
  entry: string;
}

/** How the daemon runs sites. */
export interface DaemonConfig {
  /** Where the sites' caches live, one directory each. */
  cacheRoot: string;
  /** The restore's share of the wake-up budget, in milliseconds. */
  restoreTimeoutMs: number;
  /** The Deno that runs the sites. */
  deno: string;
  /** Deno's flags for a site (permissions). */
  flags: string[];
}

/** A started site: its process and what the restore did. */
export interface Started {
  restore: RestoreResult;
  process: Deno.ChildProcess;
}

/** Restores the site's cache, then starts it. The restore never fails the deploy. */
export async function deploy(config: DaemonConfig, request: Deploy): Promise<Started> {
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(request.site)) {
    throw new Error(`site ${JSON.stringify(request.site)} is not a DNS label`);
  }
  const denoDir = `${config.cacheRoot}/${request.site}`;
  const result = await restore({
    url: request.url,
    dest: denoDir,
    timeoutMs: config.restoreTimeoutMs,
  });
  // One line per wake-up: count `reason` in the daemon's metrics to see caches that stopped
  // working.
  console.log(JSON.stringify({ event: "sitecache_restore", site: request.site, ...result }));
  // Not --cached-only: a module the cache lacks (a new deployment's) is downloaded, not fatal.
  const process = new Deno.Command(config.deno, {
    args: ["run", ...config.flags, request.entry],
    env: { DENO_DIR: denoDir },
    stdin: "null",
  }).spawn();
  return { restore: result, process };
}

if (import.meta.main) {
  const config: DaemonConfig = {
    cacheRoot: Deno.env.get("CACHE_ROOT") ?? "/deno-dirs",
    restoreTimeoutMs: Number(Deno.env.get("RESTORE_TIMEOUT_MS") ?? "8000"),
    deno: Deno.execPath(),
    flags: ["--allow-net", "--allow-env"],
  };
  Deno.serve(async (req) => {
    if (req.method !== "POST" || new URL(req.url).pathname !== "/deploy") {
      return new Response("not found\n", { status: 404 });
    }
    const started = await deploy(config, await req.json() as Deploy);
    return Response.json({ pid: started.process.pid, restore: started.restore });
  });
}
