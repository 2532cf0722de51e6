/* rt_pthread.c: the pthread subset (pthread.h) on the simulator's parlib calls. */
#include <pthread.h>

#define RT __attribute__((weak))

static int rt_err(long ret)
{
	return ret < 0 ? (int)-ret : 0;
}

RT int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg)
{
	long uth = uthread_create(start, arg);

	if (uth < 0)
		return (int)-uth;
	if (attr && attr->detached)
		uthread_detach(uth);
	*thread = uth;
	return 0;
}

RT int pthread_join(pthread_t thread, void **retval)
{
	return rt_err(uthread_join(thread, retval));
}

RT int pthread_detach(pthread_t thread)
{
	return rt_err(uthread_detach(thread));
}

RT pthread_t pthread_self(void)
{
	return uthread_self();
}

RT int pthread_equal(pthread_t a, pthread_t b)
{
	return a == b;
}

RT int pthread_yield(void)
{
	uthread_yield();
	return 0;
}

RT int sched_yield(void)
{
	uthread_yield();
	return 0;
}

RT void pthread_exit(void *retval)
{
	uthread_exit(retval);
}

RT int pthread_attr_init(pthread_attr_t *attr)
{
	attr->detached = 0;
	return 0;
}

RT int pthread_attr_destroy(pthread_attr_t *attr)
{
	(void)attr;
	return 0;
}

RT int pthread_attr_setdetachstate(pthread_attr_t *attr, int state)
{
	if (state != PTHREAD_CREATE_JOINABLE && state != PTHREAD_CREATE_DETACHED)
		return EINVAL;
	attr->detached = state == PTHREAD_CREATE_DETACHED;
	return 0;
}

RT int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
{
	(void)attr;
	m->__word = 0;
	return 0;
}

RT int pthread_mutex_destroy(pthread_mutex_t *m)
{
	(void)m;
	return 0;
}

RT int pthread_mutex_lock(pthread_mutex_t *m)
{
	return rt_err(__syscall1(SYS_mutex_lock, m));
}

RT int pthread_mutex_trylock(pthread_mutex_t *m)
{
	return rt_err(__syscall1(SYS_mutex_trylock, m));
}

RT int pthread_mutex_unlock(pthread_mutex_t *m)
{
	return rt_err(__syscall1(SYS_mutex_unlock, m));
}

RT int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *attr)
{
	(void)attr;
	c->__word = 0;
	return 0;
}

RT int pthread_cond_destroy(pthread_cond_t *c)
{
	(void)c;
	return 0;
}

RT int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
{
	return rt_err(__syscall2(SYS_cond_wait, c, m));
}

RT int pthread_cond_signal(pthread_cond_t *c)
{
	return rt_err(__syscall1(SYS_cond_signal, c));
}

RT int pthread_cond_broadcast(pthread_cond_t *c)
{
	return rt_err(__syscall1(SYS_cond_broadcast, c));
}

RT int pthread_barrier_init(pthread_barrier_t *b, const pthread_barrierattr_t *attr, unsigned count)
{
	(void)attr;
	if (count == 0)
		return EINVAL;
	b->lock.__word = 0;
	b->cv.__word = 0;
	b->count = count;
	b->arrived = 0;
	b->generation = 0;
	return 0;
}

RT int pthread_barrier_destroy(pthread_barrier_t *b)
{
	(void)b;
	return 0;
}

/* The last to arrive wakes the others and gets PTHREAD_BARRIER_SERIAL_THREAD; the others get 0. */
RT int pthread_barrier_wait(pthread_barrier_t *b)
{
	unsigned long gen;

	pthread_mutex_lock(&b->lock);
	gen = b->generation;
	if (++b->arrived == b->count) {
		b->arrived = 0;
		b->generation++;
		pthread_cond_broadcast(&b->cv);
		pthread_mutex_unlock(&b->lock);
		return PTHREAD_BARRIER_SERIAL_THREAD;
	}
	while (gen == b->generation)
		pthread_cond_wait(&b->cv, &b->lock);
	pthread_mutex_unlock(&b->lock);
	return 0;
}

RT int pthread_once(pthread_once_t *once, void (*init)(void))
{
	if (__atomic_load_n(&once->done, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&once->lock);
	if (!once->done) {
		init();
		__atomic_store_n(&once->done, 1, __ATOMIC_RELEASE);
	}
	pthread_mutex_unlock(&once->lock);
	return 0;
}
