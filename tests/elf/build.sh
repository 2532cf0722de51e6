#!/usr/bin/env bash
# Rebuild the ELF fixtures for tests/test_elf.py: run `bash tests/elf/build.sh`
# (from anywhere), then update the addresses hardcoded in tests/test_elf.py if
# the toolchain moved anything (`nm -n tests/elf/*.elf`). The built .elf files
# are committed so the tests never need a compiler.
#
# Flags are fixed so a given toolchain reproduces the same bytes: static,
# no PIE, no build-id, 4 KiB pages, no .comment, no unwind tables, and sources
# named relative to src/ so no absolute path lands in the symbol table.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/src"

CC="${CC:-gcc}"
COMMON=(
	-static -nostdlib -nostartfiles -no-pie -fno-pic
	-Wl,--build-id=none -Wl,-z,max-page-size=4096
)
CFLAGS=(
	-O2 -ffreestanding -fno-asynchronous-unwind-tables -fno-stack-protector
	-fcf-protection=none -fno-ident -Wall -Werror
)

# extable.elf: ld's default layout (separate R, R-X, R, RW segments).
"$CC" "${COMMON[@]}" extable.S -o ../extable.elf
# extable8.elf: the older 8-byte __ex_table entries.
"$CC" "${COMMON[@]}" extable8.S -o ../extable8.elf
# hello.elf: freestanding C; noseparate-code puts the headers in the text segment.
"$CC" "${COMMON[@]}" "${CFLAGS[@]}" -Wl,-z,noseparate-code hello.c -o ../hello.elf

for f in ../extable.elf ../extable8.elf ../hello.elf; do
	printf '%s: %s bytes\n' "${f#../}" "$(stat -c %s "$f")"
done
