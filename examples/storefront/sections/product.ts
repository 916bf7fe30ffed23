// The product page's section, which main.ts imports only when a product page is asked for (by a
// computed specifier): its own npm package is in the cache only if the warm step served a
// product page.
import { h, type VNode } from "npm:preact@11.2.0";
import { marked } from "npm:marked@15.0.12";
import type { Product } from "../main.ts";

export function render(product: Product, price: (cents: number) => string): VNode {
  const description = marked.parse(
    `**${product.name}**, ${price(product.priceCents)}. ${
      product.stock > 0 ? `${product.stock} in stock.` : "_Sold out._"
    }`,
    { async: false },
  ) as string;
  return h("article", {
    "data-sku": product.sku,
    dangerouslySetInnerHTML: { __html: description },
  });
}
