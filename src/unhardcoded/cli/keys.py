"""`unhardcoded keys`: the keys the proxy and its callers use.

`keys generate` writes an Ed25519 key pair for signed decisions (docs/signing.md). `keys hash` turns a client key (read from stdin, never from the command line, where it would sit in the
shell's history and the process list) into the SHA-256 a keys file (`unhardcoded serve --keys FILE`) holds.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TYPE_CHECKING

from . import UsageError

if TYPE_CHECKING:
    from . import Subcommands


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser("keys", help="signing keys for decisions and client keys for `serve --keys`")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True, parser_class=type(p))
    g = keys.add_parser(
        "generate",
        help="write NAME.key (private, mode 0600) and NAME.pub (public); print the key id",
        description=(
            "Write an Ed25519 private key (PKCS#8 PEM, mode 0600) for `unhardcoded serve --signing-key` and its "
            "public key (SubjectPublicKeyInfo PEM) for verifiers. Existing files are never overwritten."
        ),
    )
    g.add_argument("--out", metavar="DIR", default=".", help="directory to write the two files to (default: .)")
    g.add_argument("--name", metavar="NAME", default="signing", help="file name stem (default: signing)")
    g.set_defaults(run=cmd_keys_generate)
    h = keys.add_parser(
        "hash",
        help="the SHA-256 of a client key (read from stdin), or a ready keys-file entry with --name",
        description="Read a client key from stdin (one line) and print its SHA-256, as a keys file "
        "(`unhardcoded serve --keys FILE`) holds it. With --name, print a whole entry to paste under `keys:`.",
    )
    h.add_argument("--name", help="print a keys-file entry for this client name")
    h.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="NAME",
        help='a policy the key may use (repeatable; "*" for any; with --name)',
    )
    h.add_argument("--default-policy", metavar="NAME", help="the policy its requests get when they name none")
    h.add_argument("--inline", action="store_true", help="the key may send inline policies")
    h.set_defaults(run=cmd_hash)


def _read_key() -> str:
    if sys.stdin.isatty():
        key = getpass.getpass("client key (not echoed): ")
    else:
        lines = sys.stdin.read().splitlines()
        if len([line for line in lines if line.strip()]) > 1:
            raise UsageError("keys hash: stdin holds more than one line; give one key at a time")
        key = lines[0] if lines else ""
    key = key.strip()
    if not key:
        raise UsageError('keys hash: no key on stdin (e.g. `printf %s "$KEY" | unhardcoded keys hash`)')
    return key


def cmd_hash(args: argparse.Namespace) -> int:
    from ..server.auth import ClientKeys, key_digest

    if args.name is None and (args.policy or args.default_policy or args.inline):
        raise UsageError("keys hash: --policy, --default-policy and --inline make an entry: give --name too")
    digest = key_digest(_read_key())
    if args.name is None:
        print(digest)
        return 0
    policies = args.policy if args.policy is not None else ([args.default_policy] if args.default_policy else [])
    entry = {"name": args.name, "sha256": digest, "policies": policies}
    if args.default_policy:
        entry["default_policy"] = args.default_policy
    if args.inline:
        entry["inline"] = True
    # The entry is checked as the proxy will read it, so what is printed is known to load.
    ClientKeys.parse(json.dumps({"keys": [entry]}), "keys hash", json_only=True)
    # Quoted as JSON strings (valid YAML): a name such as 2026 or true must not read back as a number or a bool.
    print(f"- name: {json.dumps(args.name)}")
    print(f"  sha256: {digest}")
    print(f"  policies: [{', '.join(json.dumps(p) for p in policies)}]")
    if args.default_policy:
        print(f"  default_policy: {json.dumps(args.default_policy)}")
    if args.inline:
        print("  inline: true")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .._signature import write_key_pair

    private_path, public_path, key_id = write_key_pair(args.out, args.name)
    print(f"private key  {private_path}  (mode 0600: give it to the router only)")
    print(f"public key   {public_path}  (give it to verifiers)")
    print(f"key id       {key_id}")
    return 0
