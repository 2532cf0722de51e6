# Exercise 2, model solution: the restartable sequence runs from the vcore-id
# read to the store.
#
# The read must be inside: a uthread stopped after it may resume on another
# vcore, and must not go on with the address of the counter it has left.  The
# store must be last: it is the commit, and a restart after it would count the
# increment twice.  xor ecx, ecx may be in or out: rcx is 0 either way.

.text
worker:                         # worker(n): n increments of counters[this vcore]; returns n
    mov r8, rdi                 # r8: increments left
    lea r9, [rip + counters]
again:
seq_start:
    xor ecx, ecx
    mov rax, qword ptr fs:[rcx] # the vcore this uthread runs on
    lea rdx, [r9 + rax*8]       # &counters[vcore]
    mov rax, [rdx]              # load
    add rax, 1                  # add
    mov [rdx], rax              # store
seq_end:
    dec r8
    jnz again
    mov eax, 1                  # the last worker to finish sums the counters
    lock xadd qword ptr [rip + finished], rax
    cmp rax, 3
    jne out
    mov rax, [r9]
    add rax, [r9 + 8]
    mov [rip + total], rax
out:
    mov rax, rdi
    ret

.ras seq_start, seq_end

.data
counters: .quad 0, 0            # one per vcore
finished: .quad 0               # workers done
total: .quad 0                  # counters[0] + counters[1], written by the last worker
