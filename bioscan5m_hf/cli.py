"""The ``bioscan5m-hf`` command: a thin shell over the library."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__, schema
from .errors import ReleaseError, RemoteError, ShardError


def _csv_list(choices: Sequence[str] | None = None):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip() and x.strip() != "none")
        if choices is not None:
            bad = [x for x in items if x not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return items
    return parse


def _splits(text: str) -> tuple[str, ...]:
    try:
        return schema.explode_split("+".join(x.strip() for x in text.split(",")))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512MB, 1GB, 1000000)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioscan5m-hf", description="BIOSCAN-5M as a native Hugging Face dataset.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write a synthetic release in the official layout")
    p.add_argument("out", help="release folder to write")
    p.add_argument("--records", type=_positive, default=None, help="number of records (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--packages", type=_csv_list(schema.PACKAGES), default=(schema.DEFAULT_PACKAGE,),
                   help="comma-separated image packages (default cropped_256)")
    p.add_argument("--no-images", action="store_true", help="write the metadata CSV only")
    p.add_argument("--layout", type=_csv_list(("folders", "zips")), default=("folders", "zips"),
                   help="image folders, official zips, or both (default folders,zips)")
    p.add_argument("--image-size", type=_positive, default=None, help="shorter image side for every package")
    p.add_argument("--grain", type=float, default=0.0,
                   help="sensor-like noise, for JPEGs as large as real photographs (16: ~1 MB original_full)")
    p.add_argument("--workers", type=_positive, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("convert", help="convert a release into Parquet and WebDataset repos")
    p.add_argument("release", help="release folder (metadata CSV + image folders or zips)")
    p.add_argument("out", help="output folder; BIOSCAN-5M/ and BIOSCAN-5M-wds/ are written inside")
    p.add_argument("--packages", type=_csv_list(schema.PACKAGES), default=(schema.DEFAULT_PACKAGE,),
                   help="comma-separated image packages, or none for the metadata table alone (default cropped_256)")
    p.add_argument("--splits", type=_splits, default=schema.SPLITS,
                   help="comma-separated splits or metasplits for the image configs (default all)")
    p.add_argument("--formats", type=_csv_list(schema.FORMATS), default=schema.FORMATS,
                   help="parquet, webdataset or both (default both)")
    p.add_argument("--workers", type=_positive, default=1, help="worker processes writing shards")
    p.add_argument("--shard-records", type=_positive, default=None, help="at most this many records per shard")
    p.add_argument("--shard-bytes", type=_bytes, default=None, help="at most about this size per shard (default 256MB)")
    p.add_argument("--min-shards", type=_positive, default=None,
                   help="at least this many shards per split where each keeps 64 records (default 16), so readers "
                        "that parallelise by shard use that many workers x ranks")
    p.add_argument("--seed", type=int, default=0, help="seed of the record order within each split")
    p.add_argument("--image-source", choices=("auto", "folders", "zips"), default="auto",
                   help="read images from the extracted folders or the zips (default: folders when present)")
    p.add_argument("--allow-missing", action="store_true",
                   help="skip records without an image and list them in the manifest")
    p.add_argument("--overwrite", action="store_true", help="replace an output converted with other options")
    p.add_argument("--num-tasks", type=_positive, default=None,
                   help="split the shards into this many independent tasks (default: SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--task-index", type=int, default=None,
                   help="which task this is, from 0 (default: SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)")
    p.add_argument("--plan", action="store_true", help="print the shard plan (shards, records, bytes); write nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("finalize", help="after all --num-tasks parts ran: check them, write manifests and cards")
    p.add_argument("out", help="the OUT folder the parts wrote to")

    p = sub.add_parser("verify", help="check converted repos against their manifests and each other")
    p.add_argument("repo", help="the OUT folder of convert, or one repo folder")
    p.add_argument("--decode", action="store_true", help="also decode every image and check every record")
    p.add_argument("--hub", action="store_true",
                   help="also check the Hub's and the dataset viewer's rules (card, names, row groups, file counts)")

    p = sub.add_parser("push", help="create or update both repos on the Hugging Face Hub")
    p.add_argument("out", help="the OUT folder of convert")
    p.add_argument("--namespace", required=True, help="user or organisation on the Hub")
    p.add_argument("--name", default=schema.HUB_NAME, help="repo name (the WebDataset repo gets -wds)")
    p.add_argument("--force", action="store_true",
                   help="push into an existing repo that bioscan5m-hf did not make (it has no manifest.json)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default="main", help="branch to push to (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; send and write nothing")

    p = sub.add_parser("stats", help="print a converted repo's statistics (records per split, labels per rank)")
    p.add_argument("repo", help="the OUT folder of convert, one repo folder, or a URL")
    p.add_argument("--charts", default=None, metavar="DIR", help="also draw the charts (PNG) into DIR/assets")

    p = sub.add_parser("demo", help="sample -> convert -> load every config -> train, and print a summary")
    p.add_argument("workdir", nargs="?", default="bioscan5m-demo", help="folder for the demo's files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def format_plan(rows: list[dict], options) -> str:
    """``convert --plan``: shards, records, bytes and files per folder; then the same layout at full
    scale for the packages converted, against the Hub's limit of entries per folder."""
    from .convert.sharding import FILES_PER_SHARD, full_scale_folders
    from .hub.rules import HubLimits

    limit = HubLimits().files_per_folder
    lines = [f"{'format':<11}{'config':<14}{'split':<15}{'shards':>7}{'records':>11}{'bytes':>16}{'files':>7}"]
    for r in rows:
        lines.append(f"{r['format']:<11}{r['config']:<14}{r['split']:<15}{r['shards']:>7}{r['records']:>11,}"
                     f"{r['bytes']:>16,}{r['shards'] * FILES_PER_SHARD[r['format']]:>7}")
    lines.append(f"{'total':<40}{sum(r['shards'] for r in rows):>7}{'':>11}{sum(r['bytes'] for r in rows):>16,}")
    for package in options.packages:
        size = schema.PACKAGE_BYTES.get(package)
        if size is None:
            lines.append(f"full scale, {package}: no published size to project from")
            continue
        folders = full_scale_folders(package, size, options.shard_bytes, options.shard_records, options.min_shards)
        split, shards = max(folders.items(), key=lambda kv: kv[1])
        files = shards * max(FILES_PER_SHARD.values())
        lines.append(f"full scale, {package} (~{size / 1e9:,.0f} GB): at most {shards:,} shards in one folder "
                     f"({package}/{split}/), {files:,} files with the tars' indexes: "
                     + ("within" if files <= limit else "OVER") + f" the Hub's {limit:,} entries per folder")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sample":
            from .tools.sample import DEFAULT_RECORDS, write_sample

            info = write_sample(args.out, args.records or DEFAULT_RECORDS, args.seed, args.packages,
                                images=not args.no_images, layout=args.layout, image_size=args.image_size,
                                grain=args.grain, workers=args.workers, show_progress=not args.quiet)
            counts = ", ".join(f"{s} {n:,}" for s, n in info.split_counts.items())
            print(f"wrote {info.records:,} records to {info.root} ({counts}); "
                  f"{info.images:,} images, {len(info.zips)} zips")
        elif args.command == "convert":
            from .convert import ConvertOptions, convert
            from .convert.sharding import DEFAULT_MIN_SHARDS, DEFAULT_SHARD_BYTES

            options = ConvertOptions(packages=args.packages, splits=args.splits, formats=args.formats,
                                     shard_bytes=args.shard_bytes or DEFAULT_SHARD_BYTES,
                                     shard_records=args.shard_records, min_shards=args.min_shards or DEFAULT_MIN_SHARDS,
                                     seed=args.seed,
                                     allow_missing=args.allow_missing, image_source=args.image_source,
                                     workers=args.workers, show_progress=not args.quiet)
            if args.plan:
                from .convert import plan_conversion

                print(format_plan(plan_conversion(args.release, options), options))
                return 0
            from .convert import task_from_environment

            env_tasks, env_index = task_from_environment()
            num_tasks = args.num_tasks or env_tasks or 1
            task_index = args.task_index if args.task_index is not None else (env_index or 0)
            if num_tasks == 1 and (args.task_index or env_index):
                raise ValueError("a task index needs --num-tasks (or SLURM_ARRAY_TASK_COUNT)")
            result = convert(args.release, args.out, options, overwrite=args.overwrite, num_tasks=num_tasks,
                             task_index=task_index)
            if result is None:
                print(f"task {task_index + 1} of {num_tasks} done; run `bioscan5m-hf finalize {args.out}` "
                      "once every task has finished")
                return 0
            for fmt, repo in result.repos.items():
                manifest = result.manifests[fmt]
                shards = sum(len(v["shards"]) for c in manifest["configs"].values() for v in c.values())
                print(f"{repo}: {len(manifest['configs'])} configs, {shards} shards")
                for package, splits in manifest["skipped"].items():
                    print(f"  skipped (no {package} image): {sum(map(len, splits.values()))} records")
        elif args.command == "finalize":
            from .convert import finalize

            result = finalize(args.out)
            for fmt, repo in result.repos.items():
                shards = sum(len(v["shards"]) for c in result.manifests[fmt]["configs"].values() for v in c.values())
                print(f"{repo}: {len(result.manifests[fmt]['configs'])} configs, {shards} shards")
        elif args.command == "verify":
            from .repo.verify import format_report, verify

            report = verify(args.repo, decode=args.decode)
            print(format_report(report))
            ok = report.ok
            if args.hub:
                from .hub.rules import verify_hub

                hub = verify_hub(args.repo)
                print("Hub rules: " + format_report(hub))
                ok = ok and hub.ok
            return 0 if ok else 1
        elif args.command == "push":
            from .hub.push import push

            push(args.out, args.namespace, args.name, private=args.private, revision=args.revision,
                 dry_run=args.dry_run, force=args.force)
        elif args.command == "stats":
            from .convert.stats import format_stats, write_charts
            from .repo.manifest import open_repos

            repo = next(iter(open_repos(args.repo).values()))
            statistics = repo.manifest.get("statistics")
            if statistics is None:
                raise ValueError(f"{repo.root}: this conversion recorded no statistics; convert it again")
            print(format_stats(statistics))
            if args.charts:
                for path in write_charts(statistics, Path(args.charts)):
                    print(f"wrote {path}")
        elif args.command == "demo":
            from .tools.demo import run_demo

            if not run_demo(args.workdir, show_progress=not args.quiet)["ok"]:
                return 1
    except (ReleaseError, ShardError, RemoteError, ValueError, FileNotFoundError) as e:
        print(f"bioscan5m-hf: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
