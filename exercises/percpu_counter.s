# Exercise 2 (docs/exercises.md): make the per-vcore counter RAS-safe.
#
# Grade it with `akaros-sim run exercises/percpu_counter.toml`.
#
# Each worker adds 1 to counters[v] n times, v being the vcore it runs on
# (read from its TLS at fs:[0]).  No lock and no atomic instruction: only the
# uthread running on vcore v may touch counters[v].  Ticks and preemptions
# stop a uthread anywhere, and when it resumes (perhaps on another vcore) it
# finishes an update it started on data that is no longer its own, so
# increments are lost.  Declare the right restartable atomic sequence with a
# `.ras START, END` directive (and the labels it needs) so that `total` is
# exact.  Change nothing else.

.text
worker:                         # worker(n): n increments of counters[this vcore]; returns n
    mov r8, rdi                 # r8: increments left
    lea r9, [rip + counters]
again:
    xor ecx, ecx
    mov rax, qword ptr fs:[rcx] # the vcore this uthread runs on
    lea rdx, [r9 + rax*8]       # &counters[vcore]
    mov rax, [rdx]              # load
    add rax, 1                  # add
    mov [rdx], rax              # store
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

.data
counters: .quad 0, 0            # one per vcore
finished: .quad 0               # workers done
total: .quad 0                  # counters[0] + counters[1], written by the last worker
