"""``edge-ssd keygen DIR``: a new Ed25519 key pair for signing bundles (docs/fleet.md). The private key stays on
the machine that signs; the ``.pub`` goes to the devices (``rollout.public_key``)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("keygen", help="make an Ed25519 key pair for signing bundles")
    p.add_argument("dir", help="folder for bundle-signing.key (mode 0600) and bundle-signing.pub")
    p.add_argument("--name", default="bundle-signing", help="file name stem")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fleet.archive import keygen

    priv, pub = keygen(args.dir, args.name)
    print(f"private key: {priv} (keep it secret; edge-ssd sign-bundle / push-bundle --key)")
    print(f"public key:  {pub} (copy to the devices; rollout.public_key)")
    return 0
