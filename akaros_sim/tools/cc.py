"""The `cc` verb: build C (and assembly) guest sources into a static x86-64 ELF with the bundled toolchain."""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from akaros_sim.elf import ElfError, load_elf
from akaros_sim.toolchain import SOURCE_SUFFIXES, ToolchainError, build, toolchain_version

OPT_LEVELS = ("0", "1", "2", "3", "s", "z")


def add_parser(sub, common) -> None:
    """The `cc` verb on the CLI's subparsers."""
    cc = sub.add_parser(
        "cc",
        parents=[common],
        help="compile C guest sources into a static x86-64 ELF (no system compiler needed)",
        description=(
            "Compile and link FILEs (.c, .s, .S; the .h files beside them are their headers) into one static "
            "x86-64 ELF that scenarios load with `elf = ...` (or build themselves with `c = [...]`), using Zig's "
            "clang from the ziglang package (target x86_64-linux-musl, -static -nostdlib, no libc). The output "
            "is reproducible: the same sources, flags and toolchain version give the same bytes anywhere. Builds "
            "are cached in $AKAROS_SIM_CACHE (else $XDG_CACHE_HOME/akaros-sim or ~/.cache/akaros-sim). Exit "
            "status: 0 once written, 2 for bad input or a compile error (its first error line on stderr)."
        ),
    )
    cc.add_argument("files", metavar="FILE", nargs="+", help="a .c, .s or .S source")
    cc.add_argument("-o", dest="out", metavar="OUT.elf", help="the output (default: the first FILE's name with .elf)")
    cc.add_argument("-O", dest="opt", choices=OPT_LEVELS, default=None, help="optimisation level (default: 2)")
    cc.add_argument("-g", dest="debug_info", action="store_true", help="keep debug info (default: none)")
    cc.add_argument("-D", dest="defines", metavar="NAME[=VALUE]", action="append", default=[],
                    help="define a macro (repeatable)")  # fmt: skip
    cc.add_argument("-W", dest="warnings", metavar="WARNING", action="append", default=[],
                    choices=("all", "extra", "error", "pedantic"), help="-Wall, -Wextra, -Werror or -Wpedantic")  # fmt: skip
    cc.set_defaults(func=cmd_cc)


def cmd_cc(args: argparse.Namespace) -> int:
    """Build the ELF (or take it from the cache) and copy it to OUT; one summary line."""
    flags = [f"-O{args.opt}"] if args.opt else []
    flags += ["-g"] if args.debug_info else []
    flags += [f"-D{d}" for d in args.defines] + [f"-W{w}" for w in args.warnings]
    first = Path(args.files[0])
    out = Path(args.out) if args.out else Path(first.stem + ".elf")
    for name in args.files:
        if not Path(name).is_file():
            print(f"akaros-sim: {name}: no such file", file=sys.stderr)
            return 2
        if Path(name).suffix not in SOURCE_SUFFIXES:
            print(f"akaros-sim: {name}: expected a .c, .s or .S source", file=sys.stderr)
            return 2
    try:
        built = build(args.files, flags)
        program = load_elf(built)
    except (ToolchainError, ElfError) as exc:
        print(f"akaros-sim: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    try:
        shutil.copyfile(built, out)
    except OSError as exc:
        print(f"akaros-sim: {out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 2
    data = out.read_bytes()
    print(f"{out}: {len(data)} bytes, {len(program.symbols)} symbols, sha256 {hashlib.sha256(data).hexdigest()[:16]} "
          f"(zig {toolchain_version()})")  # fmt: skip
    return 0
