// A tiny Deno storefront: renders a product page with Preact, from npm packages pinned to exact
// versions. Its module cache (DENO_DIR) is what sitecache snapshots and restores: with it,
// `deno run --cached-only main.ts` starts without downloading anything.
//
// Without `--port N` it prints the home page once (what `make dev` runs). With it, it serves over
// HTTP (`deno run --allow-net --allow-read main.ts --port 8000`), and `/product/<sku>` renders a section that
// it imports at run time, by a specifier computed from the request, as storefront frameworks load
// their sections and blocks: `deno cache main.ts` cannot see that import; a warm step that serves
// the site (`sitecache warm-serve`) loads it.
//
// The warm step of sitecache.yaml caches exactly the specifiers of this file: keep the two lists
// in step.
import { h } from "npm:preact@11.2.0";
import { renderToString } from "npm:preact-render-to-string@6.8.2";
import ms from "npm:ms@2.1.3";

export type Product = { sku: string; name: string; priceCents: number; stock: number };

const products: Product[] = [
  { sku: "TEE-01", name: "Organic cotton tee", priceCents: 2400, stock: 12 },
  { sku: "MUG-02", name: "Stoneware mug", priceCents: 1800, stock: 0 },
  { sku: "TOTE-03", name: "Canvas tote", priceCents: 1500, stock: 40 },
];

const price = (cents: number) => `€${(cents / 100).toFixed(2)}`;

function ProductList({ items }: { items: Product[] }) {
  return h(
    "ul",
    { class: "products" },
    items.map((p) =>
      h(
        "li",
        { key: p.sku, "data-sku": p.sku },
        h("span", { class: "name" }, p.name),
        " ",
        h("span", { class: "price" }, price(p.priceCents)),
        p.stock === 0 ? h("em", null, " (sold out)") : null,
      )
    ),
  );
}

const home = h(
  "main",
  null,
  h("h1", null, "Storefront"),
  h(ProductList, { items: products }),
  h(
    "p",
    { class: "note" },
    `Prices cached for ${ms(ms("15m"), { long: true })}.`,
  ),
);

const portFlag = Deno.args.indexOf("--port");
const port = portFlag >= 0 ? Deno.args[portFlag + 1] : undefined;
if (port === undefined) {
  console.log(renderToString(home));
} else {
  const html = (body: string, status = 200) =>
    new Response(`<!doctype html>${body}`, {
      status,
      headers: { "content-type": "text/html; charset=utf-8" },
    });
  Deno.serve({ port: Number(port), hostname: "0.0.0.0" }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path === "/") return html(renderToString(home));
    const sku = path.match(/^\/product\/([A-Z0-9-]+)$/)?.[1];
    const product = products.find((p) => p.sku === sku);
    if (!product) return html("<p>not found</p>", 404);
    // Loaded at run time, by a specifier computed at run time (a variable: Deno's module graph
    // follows string literals and template literals, not this).
    const specifier = new URL(`./sections/${"product"}.ts`, import.meta.url).href;
    const { render } = await import(specifier);
    return html(renderToString(render(product, price)));
  });
}
