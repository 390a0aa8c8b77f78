"""`python -m training {train,evaluate,package} ...` (also `lumbarnode train|evaluate|package`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "evaluate", "package"):
        print("usage: python -m training {train,evaluate,package} ...  (add -h after any for its options)",
              file=sys.stderr)
        return 2
    if argv[0] == "train":
        from training.train import main as run
    elif argv[0] == "evaluate":
        from training.evaluate import main as run
    else:
        from training.package import main as run
    return run(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
