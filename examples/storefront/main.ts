// A tiny Deno storefront: renders a product page to stdout with Preact, from npm packages pinned
// to exact versions. Its module cache (DENO_DIR) is what sitecache snapshots and restores: with it,
// `deno run --cached-only main.ts` starts without downloading anything.
//
// The warm step of sitecache.yaml caches exactly these specifiers: keep the two lists in step.
import { h } from "npm:preact@11.2.0";
import { renderToString } from "npm:preact-render-to-string@6.8.2";
import ms from "npm:ms@2.1.3";

type Product = { sku: string; name: string; priceCents: number; stock: number };

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

const page = h(
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

console.log(renderToString(page));
