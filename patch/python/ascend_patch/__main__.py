"""``python -m ascend_patch list [--json]``: every patch, and whether it applies to the installed
vLLM (and why not: version, disabled, drift)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap


def _print_text(info: dict) -> None:
    print(f"vLLM: {info['vllm'] or 'not installed'} ({info['vllm_source']})")
    print(f"library: {info['library']}")
    if info["unknown_disabled_ids"]:
        print(f"ASCEND_PATCH_DISABLE names unknown patch id(s): {', '.join(info['unknown_disabled_ids'])}")
    for p in info["patches"]:
        verdict = "applies" if p["applies"] else "does not apply"
        print()
        print(f"{p['id']}  [{p['process']}]  versions: {', '.join(p['versions'])}  -> {verdict}")
        for r in p["reasons"]:
            print(textwrap.fill(r, 100, initial_indent="    why not: ", subsequent_indent="        "))
        for t in p["targets"]:
            print(f"    {t['status']:<9} {t['name']}{t['signature']}")
            for a in t["aliases"]:
                print(f"              also bound as {a}")
            for n in t["notes"]:
                print(f"              note: {n}")


def main(argv: list[str] | None = None) -> int:
    """Runs the command line (``argv``, default ``sys.argv[1:]``); returns the exit code: 0, or 2
    when the library cannot be loaded (the places tried go to stderr). Bad arguments exit through
    argparse (SystemExit 2); other failures (e.g. importing vLLM) propagate."""
    parser = argparse.ArgumentParser(prog="python -m ascend_patch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="every patch and whether it applies to the installed vLLM")
    lst.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    # Resolving the targets imports vLLM; its platform must be known before that (CPU when no
    # accelerator platform is selected).
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    from ._core import describe
    from ._lib import LibraryNotFound

    try:
        info = describe()
    except LibraryNotFound as e:
        print(e, file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
