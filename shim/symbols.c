//go:build ignore

/*
 * symbols.c: resolves the real functions once, reads the MPSHIM_*
 * environment and sets up the fd table. mp_init runs from the constructor,
 * or earlier from the first interposed call when another library's
 * constructor reaches us first.
 */
#include "shim.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct mp_real mp_real;
int mp_ready;
struct mp_conf mp_conf;

/* Fallbacks for symbols an older libc lacks: the system call itself. */
static int sys_close_range(unsigned int first, unsigned int last, int flags)
{
	return (int)syscall(SYS_close_range, first, last, flags);
}

static void sys_closefrom(int lowfd)
{
	MP_SAVE;
	if (lowfd >= 0)
		syscall(SYS_close_range, (unsigned int)lowfd, ~0u, 0);
	MP_RESTORE;
}

static int sys_dup3(int oldfd, int newfd, int flags)
{
	return (int)syscall(SYS_dup3, oldfd, newfd, flags);
}

static void read_conf(void)
{
	const char *v;

	v = getenv("MPSHIM_LOG");
	mp_conf.log = v && (!strcmp(v, "debug") || !strcmp(v, "1"));
	v = getenv("MPSHIM_FAIL");
	mp_conf.fail_open = v && !strcmp(v, "open");
	v = getenv("MPSHIM_LOOPBACK");
	mp_conf.loopback_ins = v && !strcmp(v, "ins");
	v = getenv("MPSHIM_SOCKET");
	if (!v || !*v || strlen(v) >= sizeof mp_conf.path)
		v = "/run/mpshim/isolator.sock";
	strcpy(mp_conf.path, v);
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void do_init(void)
{
	MP_SAVE;
#define MP_RESOLVE(ret, name, args) mp_real.name = (ret(*) args)dlsym(RTLD_NEXT, #name);
	MP_REAL_LIST(MP_RESOLVE)
#undef MP_RESOLVE
	if (!mp_real.close_range)
		mp_real.close_range = sys_close_range;
	if (!mp_real.closefrom)
		mp_real.closefrom = sys_closefrom;
	if (!mp_real.dup3)
		mp_real.dup3 = sys_dup3;
	if (!mp_real.fcntl64)
		mp_real.fcntl64 = mp_real.fcntl;
	read_conf();
	mp_table_init();
	pthread_atfork(mps_atfork_prepare, mps_atfork_parent, mps_atfork_child);
	__atomic_store_n(&mp_ready, 1, __ATOMIC_RELEASE);
	MP_RESTORE;
}

void mp_init(void)
{
	pthread_once(&init_once, do_init);
}

__attribute__((constructor)) static void mp_constructor(void)
{
	MP_SAVE;
	mp_init();
	mps_adopt_env();
	MP_RESTORE;
}
