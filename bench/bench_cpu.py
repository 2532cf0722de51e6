"""Guest throughput and fault cost through cpu.py, against raw Unicorn in the same process.

    python bench/bench_cpu.py [--slices N] [--repeat R]

(a) Instructions per second running a loop with loads, stores, a call and a
    branch in slices of 10,000 instructions: `Cpu.run(ctx, 10_000)` against the
    fastest raw loop `emu_start(pc, 0, count=10_000)` + reading rip, taken over
    both Unicorn memory configurations (default TLB, and UC_TLB_VIRTUAL with
    a minimal fill hook, which is what cpu.py uses).
(b) A fault turned into a TrapStop record, against a raw fault round trip
    (emu_start -> unmapped read -> UcError -> read rip).

Times are CPU time of the measuring process (time.process_time_ns).  Each
repetition runs (a) and (b), interleaved, in a new interpreter
(bench/_fresh.py), so none measures a process grown by the ones before;
every figure is printed as the min and the median of R repetitions
(bench/_fresh.py).  Last line: `cpu ratio: X.XX`, our median throughput over
the faster raw configuration's median (higher is better).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unicorn import UC_ARCH_X86, UC_HOOK_TLB_FILL, UC_MODE_64, UC_TLB_VIRTUAL, Uc, UcError  # noqa: E402
from unicorn import x86_const as x86  # noqa: E402
from unicorn.unicorn_py3.unicorn import uclib  # noqa: E402

from akaros_sim.asm import assemble  # noqa: E402
from akaros_sim.context import UserContext  # noqa: E402
from akaros_sim.cpu import Cpu  # noqa: E402
from akaros_sim.memory import AddressSpace, Prot  # noqa: E402
from _fresh import Figures, cpu_ns, fresh, median, serve  # noqa: E402

SLICE = 10_000
CODE, DATA, STACK = 0x400000, 0x600000, 0x800000
LOOP = """
    mov rcx, 0x7fffffffffff
top:
    mov rax, [rdi]
    add rax, rcx
    mov [rdi + 8], rax
    imul rax, rax, 7
    mov [rdi + 16], rax
    call f
    push rax
    pop rbx
    dec rcx
    jnz top
    hlt
f:
    mov rdx, [rdi + 16]
    add rdx, 1
    mov [rdi + 24], rdx
    ret
"""
FAULT = "mov rbx, [rax]"


def asm(src: str, addr: int) -> bytes:
    """The code bytes of src at addr, from the project's assembler (keystone or clang, whichever is here)."""
    return assemble(src, addr, name="bench").segments[0].data


def raw_uc(spans: list[tuple[int, int, int]], virtual_tlb: bool) -> Uc:
    """A raw Unicorn with each (start, end, perms) span mapped; with virtual_tlb, in
    UC_TLB_VIRTUAL mode with the smallest identity fill hook (the fastest raw loop)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    if virtual_tlb:
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)

        def fill(_uc, vaddr, _access, entry, _ud):
            for lo, hi, perms in spans:
                if lo <= vaddr < hi:
                    entry.paddr, entry.perms = vaddr & ~0xFFF, perms
                    return True
            return False

        uc.hook_add(UC_HOOK_TLB_FILL, fill)
    for lo, hi, perms in spans:
        uc.mem_map(lo, hi - lo, perms)
    return uc


def raw_slices_per_second(uc: Uc, entry: int, slices: int, slice_insns: int = SLICE) -> float:
    """Guest instructions per host second of the raw loop: emu_start(pc, 0, count=slice) + read rip."""
    rip = ctypes.c_uint64(entry)
    uch = uc._uch
    uclib.uc_emu_start(uch, entry, 0, 0, slice_insns)  # warm the translation cache
    uclib.uc_reg_read(uch, x86.UC_X86_REG_RIP, ctypes.byref(rip))
    t0 = cpu_ns()
    for _ in range(slices):
        uclib.uc_emu_start(uch, rip.value, 0, 0, slice_insns)
        uclib.uc_reg_read(uch, x86.UC_X86_REG_RIP, ctypes.byref(rip))
    return slices * slice_insns / (cpu_ns() - t0) * 1e9


def raw_machine(virtual_tlb: bool) -> Uc:
    uc = raw_uc([(CODE, CODE + 0x1000, 5), (DATA, DATA + 0x1000, 3), (STACK - 0x10000, STACK, 3)], virtual_tlb)
    uc.reg_write(x86.UC_X86_REG_RDI, DATA)
    uc.reg_write(x86.UC_X86_REG_RSP, STACK - 8)
    return uc


def raw_throughput(virtual_tlb: bool, slices: int) -> float:
    uc = raw_machine(virtual_tlb)
    uc.mem_write(CODE, asm(LOOP, CODE))
    return raw_slices_per_second(uc, CODE, slices)


def sim_machine(source: str) -> tuple[Cpu, UserContext]:
    mem = AddressSpace()
    cpu = Cpu(mem)
    mem.map(CODE, 0x1000, Prot.READ | Prot.EXEC, "code")
    mem.map(DATA, 0x1000, Prot.READ | Prot.WRITE, "data")
    mem.map(STACK - 0x10000, 0x10000, Prot.READ | Prot.WRITE, "stack")
    mem.write(CODE, asm(source, CODE))
    return cpu, UserContext(rip=CODE, rsp=STACK - 8, rdi=DATA, rax=0x500000)


def sim_throughput(slices: int) -> float:
    cpu, ctx = sim_machine(LOOP)
    cpu.run(ctx, SLICE)
    t0 = cpu_ns()
    for _ in range(slices):
        cpu.run(ctx, SLICE)
    return slices * SLICE / (cpu_ns() - t0) * 1e9


def raw_fault_us(n: int) -> float:
    uc = raw_machine(virtual_tlb=False)
    uc.mem_write(CODE, asm(FAULT, CODE))
    uc.reg_write(x86.UC_X86_REG_RAX, 0x500000)
    rip = ctypes.c_uint64()
    t0 = cpu_ns()
    for _ in range(n):
        try:
            uc.emu_start(CODE, 0, count=SLICE)
        except UcError:
            pass
        uclib.uc_reg_read(uc._uch, x86.UC_X86_REG_RIP, ctypes.byref(rip))
    assert rip.value == CODE
    return (cpu_ns() - t0) / n / 1e3


def sim_fault_us(n: int) -> float:
    cpu, ctx = sim_machine(FAULT)
    t0 = cpu_ns()
    for _ in range(n):
        ctx.rip = CODE
        stop = cpu.run(ctx, SLICE)
    assert stop.trap_nr == 14 and stop.aux == 0x500000
    return (cpu_ns() - t0) / n / 1e3


def repetition(slices: int, faults: int) -> dict[str, float]:
    """One repetition of every figure, interleaved so machine noise hits all alike (in a fresh process)."""
    return {
        "raw_default": raw_throughput(False, slices),
        "raw_virtual": raw_throughput(True, slices),
        "sim": sim_throughput(slices),
        "raw_f": raw_fault_us(faults),
        "sim_f": sim_fault_us(faults),
    }


def main() -> None:
    if serve({"repetition": repetition}):
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of 10,000 instructions per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (at least 5); min and median are printed")
    parser.add_argument("--faults", type=int, default=2000, help="faults per measurement")
    args = parser.parse_args()

    reps = [fresh(__file__, "repetition", slices=args.slices, faults=args.faults) for _ in range(args.repeat)]
    raw_default, raw_virtual, sim = ([r[k] / 1e6 for r in reps] for k in ("raw_default", "raw_virtual", "sim"))
    raw_f, sim_f = ([r[k] for r in reps] for k in ("raw_f", "sim_f"))
    raw_best = max(median(raw_default), median(raw_virtual))
    table = Figures(args.repeat, width=46, fmt="8.1f")
    table.header()
    table.row(f"raw emu_start count={SLICE}, default TLB", raw_default, "Minsn/s")
    table.row(f"raw emu_start count={SLICE}, virtual TLB+fill", raw_virtual, "Minsn/s")
    table.row(f"akaros_sim Cpu.run budget={SLICE}", sim, "Minsn/s",
              note=f"({1e3 / median(sim):.1f} ns per guest instruction)")  # fmt: skip
    table.row("raw fault round trip", raw_f, "us")
    table.row("akaros_sim fault -> TrapStop", sim_f, "us")
    table.value("fault cost ratio (ours / raw, medians)", median(sim_f) / median(raw_f), fmt="8.2f")
    print(f"cpu ratio: {median(sim) / raw_best:.2f}")


if __name__ == "__main__":
    main()
