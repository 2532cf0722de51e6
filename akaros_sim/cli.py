"""The `akaros-sim` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from akaros_sim.context import PfErr, TrapNr, UserContext
from akaros_sim.cpu import BudgetSpent, Cpu, SyscallStop, TrapStop
from akaros_sim.disasm import describe_insn, insn_length
from akaros_sim.memory import PAGE_SIZE, AddressSpace, Prot

# Where `machine` puts the stack and the lazily backed heap.
STACK_TOP = 0x7FF0_0000_0000
STACK_SIZE = 64 * 1024
HEAP = 0x1000_0000
HEAP_SIZE = 1 << 20
ENOSYS = 38
SYS_WRITE, SYS_EXIT = 1, 60


def load_program(path: Path):
    """A Program from an assembly file (.s/.S/.asm) or a static ELF."""
    data = path.read_bytes()
    if data[:4] == b"\x7fELF":
        from akaros_sim.elf import load_elf

        return load_elf(path)
    from akaros_sim.asm import assemble

    return assemble(data.decode(), name=path.name)


def cmd_machine(args: argparse.Namespace) -> int:
    """Run a program on a bare machine with a minimal kernel, printing every stop."""
    path = Path(args.program)
    try:
        program = load_program(path)
    except (OSError, ValueError) as exc:
        print(f"akaros-sim: {exc}", file=sys.stderr)
        return 2
    mem = AddressSpace()
    cpu = Cpu(mem)
    mem.load(program)
    # a guard page below the stack stays unmapped
    mem.map(STACK_TOP - STACK_SIZE, STACK_SIZE, Prot.READ | Prot.WRITE, "stack")
    mem.map(HEAP, HEAP_SIZE, Prot.READ | Prot.WRITE, "heap", backed=False)
    ctx = UserContext(rip=program.entry, rsp=STACK_TOP - 8)
    print(f"{program.name}: entry {program.entry:#x}, budget {args.budget} instructions per slice")
    slices = 0
    while True:
        stop = cpu.run(ctx, args.budget)
        if isinstance(stop, BudgetSpent):
            slices += 1
            continue
        where = f"[{cpu.instructions():>8} insns]"
        if slices:
            print(f"{where} ... {slices} full slice(s) of {args.budget} instructions")
            slices = 0
        if isinstance(stop, SyscallStop):
            if stop.nr == SYS_EXIT:
                print(f"{where} syscall exit({stop.args[0]})")
                return stop.args[0] & 0xFF
            if stop.nr == SYS_WRITE:
                text = mem.read(stop.args[1], stop.args[2])
                print(f"{where} syscall write({stop.args[0]}, {stop.args[1]:#x}, {stop.args[2]}): {text!r}")
                ctx.rax = stop.args[2]
            else:
                print(f"{where} syscall {stop.nr}: -ENOSYS")
                ctx.rax = -ENOSYS & ((1 << 64) - 1)
            continue
        assert isinstance(stop, TrapStop)
        insn = describe_insn(mem, ctx.rip if stop.trap_nr not in (TrapNr.BP, TrapNr.DB) else ctx.rip - 1)
        print(f"{where} {stop.describe()} at rip={ctx.rip:#x}: {insn}")
        if stop.trap_nr == TrapNr.PF and stop.err & PfErr.VMR_BACKED:
            mem.populate(stop.aux)
            print(f"{where}   populated the page at {stop.aux & ~(PAGE_SIZE - 1):#x}; retrying")
            ctx.clear_trap()
            continue
        if stop.trap_nr in (TrapNr.BP, TrapNr.DB):
            ctx.clear_trap()
            continue
        if args.skip_faults:
            length = insn_length(mem, ctx.rip)
            print(f"{where}   skipping the {length}-byte faulting instruction (--skip-faults)")
            ctx.rip += length
            ctx.clear_trap()
            continue
        print("unhandled fault; registers:")
        print(ctx)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akaros-sim",
        description="A deterministic simulator of Akaros-style user-level scheduling.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    machine = sub.add_parser(
        "machine",
        help="run one program on the bare machine (no 2LS) and print every stop",
        description=(
            "Load PROGRAM (x86-64 assembly or a static ELF), run it from its entry point with a "
            f"64 KiB stack and a lazily backed 1 MiB heap at {HEAP:#x}, and print every way it "
            "stops: syscalls (write and exit are served), page faults on the heap (populated and "
            "retried), breakpoints (continued) and any other trap (reported with registers; the run ends, "
            "or with --skip-faults the instruction is skipped). Exit status: 0 after exit(0), 1 on an "
            "unhandled trap, 2 if PROGRAM cannot be loaded."
        ),
    )
    machine.add_argument("program", help="assembly source (.s) or static x86-64 ELF")
    machine.add_argument(
        "--skip-faults", action="store_true", help="report an unhandled trap, skip the instruction and go on"
    )
    machine.add_argument("--budget", type=int, default=10_000, help="instructions per slice (default 10000)")
    machine.set_defaults(func=cmd_machine)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
