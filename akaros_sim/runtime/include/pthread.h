/*
 * pthread.h: a POSIX threads subset on the simulator's parlib.
 *
 * Threads are parlib uthreads (akaros/uthread.h); mutexes and condition
 * variables are parlib's Mutex and CondVar, keyed by the object's address, so
 * a zero-filled object (the static initialisers) needs no init call.
 * Barriers and pthread_once are built on them.  Functions return 0 or a
 * positive errno, as POSIX says.
 */
#ifndef AKAROS_PTHREAD_H
#define AKAROS_PTHREAD_H

#include <akaros/uthread.h>

typedef long pthread_t;
typedef struct { int detached; } pthread_attr_t;
typedef struct { long __word; } pthread_mutex_t;
typedef struct { int __unused; } pthread_mutexattr_t;
typedef struct { long __word; } pthread_cond_t;
typedef struct { int __unused; } pthread_condattr_t;
typedef struct { int __unused; } pthread_barrierattr_t;
typedef struct {
	pthread_mutex_t lock;
	pthread_cond_t cv;
	unsigned count, arrived;
	unsigned long generation;
} pthread_barrier_t;
typedef struct { pthread_mutex_t lock; volatile int done; } pthread_once_t;

#define PTHREAD_MUTEX_INITIALIZER { 0 }
#define PTHREAD_COND_INITIALIZER { 0 }
#define PTHREAD_ONCE_INIT { { 0 }, 0 }
#define PTHREAD_CREATE_JOINABLE 0
#define PTHREAD_CREATE_DETACHED 1
#define PTHREAD_BARRIER_SERIAL_THREAD (-1)

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg);
int pthread_join(pthread_t thread, void **retval);
int pthread_detach(pthread_t thread);
pthread_t pthread_self(void);
int pthread_equal(pthread_t a, pthread_t b);
int pthread_yield(void);
int sched_yield(void);
__attribute__((noreturn)) void pthread_exit(void *retval);

int pthread_attr_init(pthread_attr_t *attr);
int pthread_attr_destroy(pthread_attr_t *attr);
int pthread_attr_setdetachstate(pthread_attr_t *attr, int state);

int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr);
int pthread_mutex_destroy(pthread_mutex_t *m);
int pthread_mutex_lock(pthread_mutex_t *m);
int pthread_mutex_trylock(pthread_mutex_t *m);
int pthread_mutex_unlock(pthread_mutex_t *m);

int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *attr);
int pthread_cond_destroy(pthread_cond_t *c);
int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m);
int pthread_cond_signal(pthread_cond_t *c);
int pthread_cond_broadcast(pthread_cond_t *c);

int pthread_barrier_init(pthread_barrier_t *b, const pthread_barrierattr_t *attr, unsigned count);
int pthread_barrier_destroy(pthread_barrier_t *b);
int pthread_barrier_wait(pthread_barrier_t *b);

int pthread_once(pthread_once_t *once, void (*init)(void));

#endif
