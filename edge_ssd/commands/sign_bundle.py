"""``edge-ssd sign-bundle BUNDLE --key KEY``: write ``manifest.sig`` (Ed25519 over manifest.json) into a bundle, so
that devices with ``rollout.public_key`` accept it (docs/fleet.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("sign-bundle", help="sign a bundle for roll-out (Ed25519, key from edge-ssd keygen)")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--key", help="private key file (edge-ssd keygen)")
    p.add_argument("--check", metavar="PUB", help="verify the bundle's signature with this public key instead")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import UserError
    from ..fleet.archive import load_public_key, sign_bundle, verify_signature
    from ..model.bundle import BundleError

    if args.check:
        try:
            verify_signature(args.bundle, load_public_key(args.check))
        except BundleError as e:
            raise UserError(f"{args.bundle}: {e}") from None
        print(f"{args.bundle}: signature OK")
        return 0
    if not args.key:
        raise UserError("pass --key KEY (make one with `edge-ssd keygen DIR`) or --check PUB")
    sig = sign_bundle(args.bundle, args.key)
    print(f"signed: {sig}")
    return 0
