// Loaded at run time only: the TypeScript compiler (a 9 MB module: parsing and compiling it is
// most of what a V8 code cache saves) and lodash. Little work is done with them: what is timed is
// loading them.
import ts from "npm:typescript@5.6.3";
import _ from "npm:lodash@4.17.21";

export function report(): Promise<string> {
  const kinds = Object.keys(ts.SyntaxKind).length;
  const sizes = _.chunk([1, 2, 3, 4, 5, 6], 2).map((c: number[]) => _.sum(c));
  return Promise.resolve(`<p>TypeScript ${ts.version}, ${kinds} syntax kinds</p><p>${sizes}</p>`);
}
