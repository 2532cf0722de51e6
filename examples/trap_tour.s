# A tour of the ways guest code stops, for `akaros-sim machine`.
# Each stop is printed with the instruction that caused it.
# Run: akaros-sim machine --skip-faults examples/trap_tour.s
_start:
    # write(1, msg, len): a syscall (Akaros's numbers, as the runtime's), serviced by the minimal kernel
    mov eax, 101
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, msg_end - msg
    syscall

    # the heap VMR is valid but not backed: #PF with PF_VMR_BACKED,
    # populated by the kernel, then the store is retried and succeeds
    mov rbx, 0x10000000
    mov qword ptr [rbx + 8], 42
    mov rcx, [rbx + 8]

    # a breakpoint is a trap: reported, then execution continues after it
    int3

    # a loop long enough to span several budget slices
    mov ecx, 25000
spin:
    dec ecx
    jnz spin

    # divide by zero: #DE, a fault this bare machine does not handle;
    # with --skip-faults it is reported and skipped
    xor edx, edx
    xor ecx, ecx
    mov eax, 7
    div ecx

    # a privileged instruction in user mode: #GP
    hlt

    # exit(0): proc_destroy
    mov eax, 12
    xor edi, edi
    syscall

.data
msg:
    .ascii "hello from the guest\n"
msg_end:
