//go:build ignore

/*
 * fdtable.c: the one table of descriptors. It is a single anonymous mapping
 * with one entry per possible fd number (RLIMIT_NOFILE's hard limit), so
 * its pages stay the kernel's shared zero page until an entry is written
 * and a lookup is one bounds check and one load. It is never resized: an fd
 * beyond it is treated as foreign (and a socket that would land there stays
 * on the kernel).
 */
#include "shim.h"

#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#define MP_TABLE_MAX (1u << 22) /* 4M fds: 192 MiB of address space, lazily backed */

struct mp_fd *mp_table;
unsigned int mp_table_size;
unsigned int mp_table_hiwat;

void mp_table_init(void)
{
	struct rlimit rl;
	size_t n = 1u << 16, bytes;
	void *p;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > MP_TABLE_MAX)
			n = MP_TABLE_MAX;
		else if (rl.rlim_max > 0)
			n = rl.rlim_max;
	}
	bytes = n * sizeof(struct mp_fd);
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		 -1, 0);
	if (p == MAP_FAILED)
		return; /* size stays 0: every fd is foreign, the shim is inert */
	mp_table = p;
	mp_table_size = (unsigned int)n;
}

struct mp_fd *mp_slot(int fd)
{
	if ((unsigned int)fd >= mp_table_size)
		return NULL;
	if ((unsigned int)fd >= mp_table_hiwat)
		mp_table_hiwat = (unsigned int)fd + 1;
	return &mp_table[fd];
}

void mp_clear(int fd)
{
	struct mp_fd *e = mp_get(fd);

	if (e)
		memset(e, 0, sizeof *e);
}

void mp_copy(int from, int to)
{
	struct mp_fd *src = mp_get(from), *dst;

	if (from == to)
		return;
	if (!src || src->kind == MPK_INTERNAL) {
		mp_clear(to);
		return;
	}
	dst = mp_slot(to);
	if (dst) {
		*dst = *src;
		/* An epoll registration belongs to the file, not to the number:
		 * only the original fd re-registers when it is converted. */
		dst->flags &= (uint8_t)~MPF_EPOLL;
	}
}

void mp_clear_range(unsigned int first, unsigned int last)
{
	unsigned int end = mp_table_hiwat;

	if (last < end)
		end = last + 1;
	for (unsigned int i = first; i < end; i++)
		if (mp_table[i].kind && mp_table[i].kind != MPK_INTERNAL)
			memset(&mp_table[i], 0, sizeof mp_table[i]);
}

int mp_is_ins(const struct mp_fd *e)
{
	return e && (e->kind == MPK_STREAM || e->kind == MPK_LISTEN || e->kind == MPK_DGRAM);
}
