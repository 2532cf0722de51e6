"""The C toolchain: C (and assembly) sources -> a static x86-64 ELF, on any host.

The compiler is Zig's clang, from the `ziglang` wheel (a dependency, with
wheels for Linux x86-64/aarch64, macOS x86-64/arm64 and Windows), run as
``zig cc -target x86_64-linux-musl -static -nostdlib`` (the wheel's own zig
binary): no system compiler is used.  Sources are `.c`, `.s` and `.S` files (assembly in
clang's syntax: start it with ``.intel_syntax noprefix`` for Intel operands);
the `.h` files beside them are the headers they may include.

Builds are reproducible: the inputs are copied under their base names into a
fresh temporary directory and compiled there with relative names, the
directory mapped to `.` in any debug info, no build-id, no unwind tables and
`--no-gc-sections` (a guest has no `_start` root: every function is an entry).
The same sources, flags and toolchain version give the same bytes wherever
they are built.

Every build also compiles the guest runtime (`akaros_sim/runtime`: the
headers under `include/` are on the include path as `<pthread.h>`,
`<stdio.h>`, `<uaccess.h>`, ...; the sources under `src/` are linked in, their
functions weak so a guest's own definition wins), copied under `akaros-rt/`.

Builds are cached: the ELF is stored under the sha256 of the toolchain
version, the flags, every input's name and bytes and the runtime's files, in ``$AKAROS_SIM_CACHE``
(else ``$XDG_CACHE_HOME/akaros-sim``, else ``~/.cache/akaros-sim``), so
loading the same sources again runs no compiler.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

SOURCE_SUFFIXES = (".c", ".s", ".S")
HEADER_SUFFIX = ".h"
DEFAULT_CFLAGS = ("-O2", "-g0")
# What a scenario's `cflags` may say: optimisation, debug info, macros, warnings, the C standard.
ALLOWED_CFLAGS = re.compile(
    r"-O[0-3sz]|-g0?|-D[A-Za-z_]\w*(=[^\s]*)?|-U[A-Za-z_]\w*|-W(all|extra|error|pedantic)|-w"
    r"|-std=(c|gnu)(89|99|11|17|23)|-f(no-)?builtin|-fno-inline|-fomit-frame-pointer|-fno-omit-frame-pointer"
)
# Fixed flags: the target, no libc, a static non-PIE executable and reproducible bytes.
BASE_FLAGS = (
    "-target", "x86_64-linux-musl", "-static", "-nostdlib", "-ffreestanding", "-fno-pic", "-fno-pie",
    "-fno-stack-protector", "-fno-sanitize=all", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fdebug-compilation-dir=.",
    "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096", "-Wl,--no-gc-sections",
)  # fmt: skip
OUTPUT = "out.elf"
_CACHE_FORMAT = "akaros-sim cc 2"
RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
RUNTIME_PREFIX = "akaros-rt"  # where the runtime goes in the build directory


def runtime_files() -> list[tuple[str, bytes]]:
    """The guest runtime: (path relative to RUNTIME_DIR, bytes) of every header and source, sorted."""
    files = sorted(p for p in RUNTIME_DIR.rglob("*") if p.is_file() and p.suffix in (".h", ".c"))
    return [(p.relative_to(RUNTIME_DIR).as_posix(), p.read_bytes()) for p in files]


def _runtime_args(runtime: list[tuple[str, bytes]]) -> list[str]:
    """The compiler arguments that add the runtime (runtime_files()): its include directory and its sources."""
    sources = [name for name, _ in runtime if name.endswith(".c")]
    return ["-I", f"{RUNTIME_PREFIX}/include", *(f"{RUNTIME_PREFIX}/{name}" for name in sources)]


class ToolchainError(ValueError):
    """A build that cannot run or fails; the message is one line naming the file (and line) at fault."""


def available() -> bool:
    """Whether the ziglang package is installed."""
    try:
        importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def toolchain_version() -> str:
    """The version of the installed ziglang package (that of `python -m ziglang version`)."""
    try:
        return importlib.metadata.version("ziglang")
    except importlib.metadata.PackageNotFoundError:
        raise ToolchainError("no C toolchain: the ziglang package is not installed (pip install ziglang)") from None


def zig_command() -> list[str]:
    """How to run zig: the ziglang wheel's binary itself (saves a Python start per call), else `python -m ziglang`."""
    spec = importlib.util.find_spec("ziglang")
    for folder in (spec.submodule_search_locations or ()) if spec else ():
        for exe in ("zig", "zig.exe"):
            if Path(folder, exe).is_file():
                return [str(Path(folder, exe))]
    return [sys.executable, "-m", "ziglang"]


def cache_dir() -> Path:
    """Where built ELFs are kept: $AKAROS_SIM_CACHE, else $XDG_CACHE_HOME/akaros-sim, else ~/.cache/akaros-sim."""
    if os.environ.get("AKAROS_SIM_CACHE"):
        return Path(os.environ["AKAROS_SIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "akaros-sim"


def check_cflags(cflags: Iterable[str]) -> tuple[str, ...]:
    """The flags, each checked against ALLOWED_CFLAGS; ToolchainError names the first that is not allowed."""
    flags = tuple(cflags)
    for flag in flags:
        if not isinstance(flag, str) or not ALLOWED_CFLAGS.fullmatch(flag):
            raise ToolchainError(
                f"flag {flag!r} is not allowed (expected -O0..-O3, -Os, -Oz, -g, -g0, -DNAME[=VALUE], -UNAME, "
                "-Wall, -Wextra, -Werror, -Wpedantic, -w, -std=..., -f[no-]builtin, -fno-inline, "
                "-f[no-]omit-frame-pointer)"
            )
    return flags


def inputs(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """The files a build reads: the sources, then the headers beside them (sorted), each once."""
    paths = [Path(s) for s in sources]
    if not paths:
        raise ToolchainError("no source files given")
    for path in paths:
        if path.suffix not in SOURCE_SUFFIXES:
            raise ToolchainError(f"{path}: expected a .c, .s or .S source, got {path.suffix or 'no suffix'}")
    seen = {p.resolve() for p in paths}
    headers = []
    for folder in dict.fromkeys(p.parent for p in paths):
        for header in sorted(folder.glob(f"*{HEADER_SUFFIX}")) if folder.is_dir() else ():
            if header.resolve() not in seen:
                seen.add(header.resolve())
                headers.append(header)
    return paths + headers


def _read_inputs(files: list[Path]) -> list[tuple[str, bytes, Path]]:
    """(base name, bytes, path) of each input; two different files may not share a base name."""
    out: dict[str, tuple[bytes, Path]] = {}
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ToolchainError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if path.name in out and out[path.name][0] != data:
            raise ToolchainError(f"{path}: another input {str(out[path.name][1])!r} has the same name")
        out.setdefault(path.name, (data, path))
    return [(name, data, path) for name, (data, path) in out.items()]


def build_key(sources: Sequence[str | os.PathLike], cflags: Iterable[str] = ()) -> str:
    """The cache key of a build: sha256 of the toolchain version, the flags and every input's name and bytes."""
    flags = check_cflags(cflags)
    digest = hashlib.sha256()
    for part in (_CACHE_FORMAT, toolchain_version(), *BASE_FLAGS, *DEFAULT_CFLAGS, "--", *flags, "--"):
        digest.update(part.encode() + b"\0")
    files = _read_inputs(inputs(sources))
    digest.update(" ".join(Path(s).name for s in sources).encode() + b"\0")
    for name, data, _ in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    for name, data in runtime_files():
        digest.update(f"{RUNTIME_PREFIX}/{name}".encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def build(sources: Sequence[str | os.PathLike], cflags: Iterable[str] = ()) -> Path:
    """Compile and link `sources` into a static x86-64 ELF; the path of the cached file (built if absent).

    Raises:
        ToolchainError: an input is missing or of the wrong kind, a flag is not
            allowed, ziglang is not installed, or the compiler or linker failed
            (the message is its first error line, e.g. ``prog.c:3:5: error: ...``).
    """
    flags = check_cflags(cflags)
    key = build_key(sources, flags)
    cached = cache_dir() / "cc" / f"{key}.elf"
    if cached.is_file():
        return cached
    store(cached, compile_sources(sources, flags))
    return cached


def store(path: Path, data: bytes) -> None:
    """Write a cache file atomically: a concurrent build of the same key writes the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".build-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def compile_sources(sources: Sequence[str | os.PathLike], cflags: Iterable[str] = ()) -> bytes:
    """Run the compiler (no cache) in a fresh temporary directory; the ELF's bytes."""
    flags = check_cflags(cflags)
    toolchain_version()
    files = _read_inputs(inputs(sources))
    shown = {name: str(path) for name, _, path in files}
    with tempfile.TemporaryDirectory(prefix="akaros-sim-cc-") as tmp:
        for name, data, _ in files:
            Path(tmp, name).write_bytes(data)
        runtime = runtime_files()
        for name, data in runtime:
            Path(tmp, RUNTIME_PREFIX, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, RUNTIME_PREFIX, name).write_bytes(data)
        command = [*zig_command(), "cc", *BASE_FLAGS, f"-ffile-prefix-map={tmp}=.", *DEFAULT_CFLAGS, *flags,
                   *(Path(s).name for s in sources), *_runtime_args(runtime), "-o", OUTPUT]  # fmt: skip
        env = dict(os.environ, SOURCE_DATE_EPOCH="0", ZERO_AR_DATE="1")
        try:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise ToolchainError(f"cannot run the C toolchain: {exc.strerror or exc}") from None
        if proc.returncode != 0 or not Path(tmp, OUTPUT).is_file():
            raise ToolchainError(first_error(proc.stderr + proc.stdout, shown, proc.returncode))
        return Path(tmp, OUTPUT).read_bytes()


def first_error(output: str, shown: dict[str, str] | None = None, returncode: int = 1) -> str:
    """The compiler's first error line, with a file named as the caller named it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    line = next((x for x in lines if "error:" in x), None) or next(iter(lines), f"the compiler exited {returncode}")
    name, sep, rest = line.partition(":")
    if sep and shown and name in shown:
        line = f"{shown[name]}:{rest}"
    return line
