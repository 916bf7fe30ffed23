// The wake-up benchmark's larger site: real npm packages, some imported when it starts, the
// heaviest only when `/report` is asked for, by a specifier computed at run time (as storefront
// frameworks load sections), which `deno cache main.ts` cannot see.
//
//   deno run --allow-net --allow-env --allow-read main.ts --port 8000
import { h } from "npm:preact@11.2.0";
import { renderToString } from "npm:preact-render-to-string@6.8.2";
import { format } from "npm:date-fns@4.1.0";
import { BehaviorSubject } from "npm:rxjs@7.8.1";

const visits = new BehaviorSubject(0);
const portFlag = Deno.args.indexOf("--port");
const port = Number(portFlag >= 0 ? Deno.args[portFlag + 1] : "8000");

Deno.serve({ port, hostname: "0.0.0.0" }, async (req) => {
  visits.next(visits.value + 1);
  const path = new URL(req.url).pathname;
  if (path === "/") {
    const page = h(
      "main",
      null,
      h("h1", null, "Shop"),
      h("p", null, `${format(new Date(0), "yyyy-MM-dd")}: visit ${visits.value}`),
    );
    return new Response(renderToString(page), { headers: { "content-type": "text/html" } });
  }
  if (path === "/report") {
    // A variable specifier: Deno's module graph follows literals, not this.
    const specifier = new URL(`./sections/${"report"}.ts`, import.meta.url).href;
    const { report } = await import(specifier);
    return new Response(await report(), { headers: { "content-type": "text/html" } });
  }
  return new Response("not found", { status: 404 });
});
