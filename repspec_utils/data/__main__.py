"""`python -m repspec_utils.data {verify,missing,prepare} DATASET...` (used by scripts/fetch_data.sh)."""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from .core import DataIntegrityError, data_root
from .mnist import MNIST_LIKE, _fix_hint, prepare_fashion_mnist, prepare_mnist, verify_raw_files


def main(argv: Iterable[str] | None = None) -> int:
    """`python -m repspec_utils.data {verify,missing,prepare} DATASET... [--root R] [--source S]`.

    verify: exit 1 (message names the file and the fix) unless every dataset's raw files verify.
    missing: print the given datasets whose raw files do not verify, one per line (exit 0).
    --full: accepted for older scripts; every check hashes every file.
    prepare: copy / decompress the IDX files from --source into the data root and verify them.
    """
    ap = argparse.ArgumentParser(prog="python -m repspec_utils.data", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["verify", "missing", "prepare"])
    ap.add_argument("datasets", nargs="+", choices=sorted(MNIST_LIKE), metavar="DATASET",
                    help="mnist and/or fashion_mnist")
    ap.add_argument("--root", default=None, help="data root (default: env REPSPEC_DATA or <repo>/data)")
    ap.add_argument("--source", default=None, help="folder with the IDX files (prepare, one dataset)")
    ap.add_argument("--full", action="store_true",
                    help="accepted for older scripts: every check hashes every file (there is no stamp)")
    args = ap.parse_args(None if argv is None else list(argv))
    root = data_root(args.root)
    if args.action == "prepare" and args.source is not None and len(args.datasets) != 1:
        ap.error("--source needs exactly one dataset")
    status = 0
    for name in args.datasets:
        folder, table, human = MNIST_LIKE[name]
        raw = root / folder / "raw"
        try:
            if args.action == "prepare":
                raw = (prepare_mnist if name == "mnist" else prepare_fashion_mnist)(root, args.source)
                print(f"{human}: {raw} populated and verified (md5)")
            else:
                verify_raw_files(raw, table, label=human, fix=_fix_hint(root))
                if args.action == "verify":
                    print(f"{human}: all {len(table)} raw files in {raw} verified (md5)")
        except DataIntegrityError as e:
            if args.action == "missing":
                print(name)
            else:
                print(f"ERROR: {e}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
