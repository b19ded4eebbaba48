"""Generate the README's RPC reference and error table from the code itself.

`python -m corrald.docs README.md` rewrites the blocks between the
`<!-- rpc-reference -->` / `<!-- error-codes -->` markers; a test fails when
the README and the code disagree, so the reference cannot go stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from corral import __version__, errors
from corrald.api import methods
from corrald.rpc.dispatch import openrpc_document

BLOCKS = ("rpc-reference", "error-codes")


def _type(schema: dict[str, Any] | bool) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("type") == "object" and "title" in schema:
        return str(schema["title"])
    if schema.get("type") == "object" and "additionalProperties" in schema:
        return f"dict[string, {_type(schema['additionalProperties'])}]"
    return str(schema.get("type", "any"))


def render_rpc_reference() -> str:
    doc = openrpc_document(methods, title="corrald", version=__version__)
    out = []
    for method in doc["methods"]:
        params = ", ".join(
            f"`{p['name']}`{'' if p['required'] else '?'}: {_type(p['schema'])}"
            for p in method["params"]
        )
        out.append(f"#### `{method['name']}`\n")
        out.append(f"Params: {params or 'none'}. Result: {_type(method['result']['schema'])}.\n")
        out.append(method["description"].strip() + "\n")
    return "\n".join(out)


def render_error_codes() -> str:
    rows = ["| code | name | meaning |", "|---:|---|---|"]
    for code, cls in errors.ERROR_CLASSES.items():
        rows.append(f"| {code} | `{cls.__name__}` | {cls.default_message} |")
    return "\n".join(rows) + "\n"


def render(name: str) -> str:
    return render_rpc_reference() if name == "rpc-reference" else render_error_codes()


def blocks(text: str) -> dict[str, str]:
    """The current content of each generated block in `text`."""
    found = {}
    for name in BLOCKS:
        match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", text, re.S)
        if match:
            found[name] = match.group(1)
    return found


def rewrite(text: str) -> str:
    for name in BLOCKS:
        body = render(name)

        def fill(match: re.Match[str], body: str = body) -> str:
            return match.group(1) + body + match.group(2)

        text = re.sub(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", fill, text, flags=re.S)
    return text


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    path.write_text(rewrite(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
