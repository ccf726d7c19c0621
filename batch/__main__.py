"""``python -m batch SOURCE --output OUT``: classify every file under SOURCE (docs/batch.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from catdog.runtimes import RUNTIMES


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m batch",
        description="Classify every file under a folder or bucket with catdog on Ray Data: "
        "one row per file (path, label, probabilities, known, ood_score, model_version, "
        "error).",
    )
    parser.add_argument("source", help="a folder (read at any depth) or a URI: s3://..., gs://...")
    parser.add_argument(
        "--output", "-o", required=True, help="OUT.parquet, OUT.csv or OUT.jsonl (path or URI)"
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="a version folder, or a base folder (its newest version); "
        "default: the newest under CATDOG_MODEL_DIR (models/catdog)",
    )
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto", help="default: %(default)s")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="files per model call (default: %(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, help="actors (one model each); default: one per Ray CPU"
    )
    parser.add_argument(
        "--address", help="a Ray cluster to join (default: RAY_ADDRESS; unset: Ray in-process)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; print the summary; exit 2 on a usage error."""
    args = parse(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from batch.job import JobOptions, run  # imports Ray: after --help has had its chance

    options = JobOptions(
        source=args.source,
        output=args.output,
        model=args.model,
        runtime=args.runtime,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        address=args.address,
        progress=not args.no_progress,
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        summary = run(options, log)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(summary))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def summary_text(summary: dict) -> str:
    """The end-of-job report."""
    lines = [
        f"files: {summary['files']} ({summary['ray']}, {summary['concurrency']} actors, "
        f"model {summary['model']})",
        "labels: " + (" ".join(f"{k}={v}" for k, v in summary["labels"].items()) or "none"),
        f"neither (known=false): {summary['neither']}",
        "files by Ray node: " + " ".join(f"{k}={v}" for k, v in summary["files_by_node"].items()),
        f"errors: {summary['errors']}",
        *[f"  {n:>8}  {reason}" for reason, n in summary["errors_by_reason"].items()],
        f"seconds: {summary['seconds']}  files/s: {summary['files_per_s']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
