/*
 * pthread_stress.c: N pthreads on the simulator's 2LS check their own results.
 *
 * main_thread(n, iters) creates n workers.  In each of PHASES phases a worker
 * adds 1 to `counter` iters times under a mutex (yielding every 7 steps), then
 * waits at a barrier; the thread the barrier names serial checks that the
 * counter is exactly phase * n * iters (else it counts an error).  At the end a
 * worker reports under the mutex and signals a condition variable; main waits
 * for all n reports, joins every worker (each returns its index + 1) and
 * prints one line.  It returns the counter (n * iters * PHASES) if the joins
 * summed right, else -1.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define PHASES 3
#define MAX_THREADS 16

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t all_done = PTHREAD_COND_INITIALIZER;
pthread_barrier_t barrier;
long counter, reported, errors, serials;
static long nthreads, niters;

static void *worker(void *arg)
{
	long me = (long)arg;

	for (long phase = 1; phase <= PHASES; phase++) {
		for (long i = 0; i < niters; i++) {
			pthread_mutex_lock(&lock);
			counter++;
			pthread_mutex_unlock(&lock);
			if (i % 7 == me % 7)
				pthread_yield();
		}
		if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
			serials++;
			if (counter != phase * nthreads * niters)
				errors++;
		}
		pthread_barrier_wait(&barrier);	/* nobody starts the next phase before the check */
	}
	pthread_mutex_lock(&lock);
	reported++;
	pthread_cond_signal(&all_done);
	pthread_mutex_unlock(&lock);
	return (void *)(me + 1);
}

long main_thread(long n, long iters)
{
	pthread_t *threads = malloc(sizeof(pthread_t) * MAX_THREADS);
	long sum = 0;

	if (n > MAX_THREADS || !threads)
		return -2;
	nthreads = n;
	niters = iters;
	pthread_barrier_init(&barrier, NULL, (unsigned)n);
	for (long i = 0; i < n; i++)
		if (pthread_create(&threads[i], NULL, worker, (void *)i))
			return -3;
	pthread_mutex_lock(&lock);
	while (reported < n)
		pthread_cond_wait(&all_done, &lock);
	pthread_mutex_unlock(&lock);
	for (long i = 0; i < n; i++) {
		void *ret;

		if (pthread_join(threads[i], &ret))
			return -4;
		sum += (long)ret;
	}
	printf("pthread_stress: %ld threads, counter %ld, %ld errors\n", n, counter, errors);
	return sum == n * (n + 1) / 2 ? counter : -1;
}
