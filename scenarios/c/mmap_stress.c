/*
 * mmap_stress.c: the seed's mmap stress test in C, every access through uaccess.h.
 *
 * mapper(seed) walks an 8-page region at random (a LCG): a page it has not
 * mapped it maps (MAP_FIXED, sometimes MAP_POPULATE, else unbacked so the
 * first touch is a fault the 2LS populates) and fills so that every 8-byte
 * word holds its own address; a page it has mapped it unmaps.  It yields after
 * every step and stops once every reader is done.
 *
 * reader(stats, seed, n) makes n accesses to random words of the region:
 * three in four read the word with copy_from_user, one in four writes its
 * address back with copy_to_user.  Every call must return 0 or -EFAULT (the
 * extable fixup), never crash; a word read must be 0 (a fresh page) or its
 * own address.  The reader counts each outcome in its stats and returns
 * successes + -EFAULTs, which must be n.
 */
#include <pthread.h>
#include <sys/mman.h>
#include <uaccess.h>

#define REGION 0x30000000UL
#define NPAGES 8
#define NWORDS (NPAGES * PAGE_SIZE / 8)
#define NREADERS 4

struct stats {
	long ok, failed, mismatch, other, zeros, pattern, writes;
};

struct stats stats0, stats1, stats2, stats3;
long readers_done;
long mapper_stats[3];	/* maps, unmaps, errors */
static char mapped[NPAGES];

static unsigned long lcg(unsigned long *x)
{
	*x = *x * 6364136223846793005UL + 1442695040888963407UL;
	return *x;
}

long reader(struct stats *st, unsigned long seed, long n)
{
	for (long i = n; i > 0; i--) {
		unsigned long r = lcg(&seed);
		unsigned long *addr = (unsigned long *)(REGION + ((r >> 40) % NWORDS) * 8);
		unsigned long word = (unsigned long)-1;
		long ret;

		if (r >> 62) {
			ret = copy_from_user(&word, addr, sizeof(word));
			if (ret == 0) {
				if (word == 0)
					st->zeros++;
				else if (word == (unsigned long)addr)
					st->pattern++;
				else
					st->mismatch++;
			}
		} else {
			word = (unsigned long)addr;
			ret = copy_to_user(addr, &word, sizeof(word));
			if (ret == 0)
				st->writes++;
		}
		if (ret == 0)
			st->ok++;
		else if (ret == -EFAULT)
			st->failed++;
		else
			st->other++;
		if (i % 64 == 0)
			pthread_yield();
	}
	__atomic_add_fetch(&readers_done, 1, __ATOMIC_SEQ_CST);
	return st->ok + st->failed;
}

long mapper(unsigned long seed)
{
	long steps = 0;

	while (__atomic_load_n(&readers_done, __ATOMIC_SEQ_CST) < NREADERS) {
		unsigned long r = lcg(&seed), page_no = (r >> 40) % NPAGES;
		unsigned long *page = (unsigned long *)(REGION + page_no * PAGE_SIZE);

		if (!mapped[page_no]) {
			/* as the assembly version, a file mapping: fd 0 and no MAP_ANONYMOUS (do_mmap's rule),
			 * so an unbacked page is not in the page cache: its first touch faults with
			 * PF_VMR_BACKED and the 2LS populates it (an anonymous page the kernel would zero-fill) */
			int flags = MAP_FIXED | ((r >> 50) & 1 ? MAP_POPULATE : 0);

			if (mmap(page, PAGE_SIZE, PROT_READ | PROT_WRITE, flags, 0, 0) != page)
				mapper_stats[2]++;
			for (int w = 0; w < PAGE_SIZE / 8; w++)
				page[w] = (unsigned long)&page[w];
			mapped[page_no] = 1;
			mapper_stats[0]++;
		} else {
			if (munmap(page, PAGE_SIZE))
				mapper_stats[2]++;
			mapped[page_no] = 0;
			mapper_stats[1]++;
		}
		pthread_yield();
		steps++;
	}
	munmap((void *)REGION, NPAGES * PAGE_SIZE);
	return steps;
}
