"""`unhardcoded keys generate`: an Ed25519 key pair for signed decisions (docs/signing.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Subcommands


def add_commands(sub: Subcommands) -> None:
    p = sub.add_parser("keys", help="make the router's signing keys (Ed25519)")
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


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from .._signature import write_key_pair

    private_path, public_path, key_id = write_key_pair(args.out, args.name)
    print(f"private key  {private_path}  (mode 0600: give it to the router only)")
    print(f"public key   {public_path}  (give it to verifiers)")
    print(f"key id       {key_id}")
    return 0
