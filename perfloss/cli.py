"""The ``perfloss`` command: ``perfloss bench`` (the main job), ``perfloss pgn-train`` and ``perfloss evaluate``."""
import argparse
import sys
from typing import List, Optional

from perfloss import bench
from perfloss.evaluate import cli as evaluate_cli
from perfloss.pgn import cli as pgn_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfloss", description="Cheap perceptual losses for PyTorch.")
    subparsers = p.add_subparsers(dest="command", required=True)
    bench.add_parser(subparsers)
    pgn_cli.add_parser(subparsers)
    evaluate_cli.add_parser(subparsers)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
