//go:build ignore

/*
 * process.c: fork, the exec family and posix_spawn.
 *
 * fork needs nothing beyond the pthread_atfork handlers (session.c): the
 * child re-registers before fork returns. Every exec entry point passes the
 * INS descriptors that survive it in MPSHIM_FDS (and our client id in
 * MPSHIM_CLIENT) to the new image, whose constructor adopts them. The new
 * environment is built on the stack: exec may run in a vfork child.
 */
#include "shim.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define FDS_MAX 8192

/* Writes "MPSHIM_FDS=..." into buf; returns 0 when no INS fd survives. */
static int fds_var(char *buf, size_t cap)
{
	size_t n = 0;
	int any = 0, w;
	unsigned int hi = mp_table_hiwat;

	w = snprintf(buf, cap, "MPSHIM_FDS=");
	n = (size_t)w;
	for (unsigned int fd = 0; fd < hi; fd++) {
		struct mp_fd *e = &mp_table[fd];
		char k;
		int fl;

		if (!mp_is_ins(e))
			continue;
		fl = REAL(fcntl)((int)fd, F_GETFD);
		if (fl < 0 || (fl & FD_CLOEXEC))
			continue;
		k = e->kind == MPK_STREAM ? 's' : e->kind == MPK_LISTEN ? 'l' : 'd';
		w = snprintf(buf + n, cap - n, "%s%u:%llu:%c%c", any ? "," : "", fd,
			     (unsigned long long)e->sock, k, e->domain == AF_INET6 ? '6' : '4');
		if (w < 0 || (size_t)w >= cap - n) {
			buf[n] = 0;
			MPLOG("exec: too many INS descriptors, fd %u and later not passed", fd);
			break;
		}
		n += (size_t)w;
		any = 1;
	}
	return any;
}

static size_t env_count(char *const envp[])
{
	size_t n = 0;

	if (envp)
		while (envp[n])
			n++;
	return n;
}

/* Fills out (room for count(envp) + 3 entries) with envp minus old
 * MPSHIM_FDS/MPSHIM_CLIENT plus the current ones. */
static void env_build(char *const envp[], char **out, char *fds, size_t fdcap, char *cli,
		      size_t clicap)
{
	size_t j = 0;
	MP_SAVE;

	for (size_t i = 0; envp && envp[i]; i++) {
		if (!strncmp(envp[i], "MPSHIM_FDS=", 11) || !strncmp(envp[i], "MPSHIM_CLIENT=", 14))
			continue;
		out[j++] = envp[i];
	}
	if (fds_var(fds, fdcap)) {
		out[j++] = fds;
		snprintf(cli, clicap, "MPSHIM_CLIENT=%llu:%llu", (unsigned long long)mps_client_id(),
			 (unsigned long long)mps_client_key());
		out[j++] = cli;
		MPLOG("exec: %s", fds);
	}
	out[j] = NULL;
	MP_RESTORE;
}

#define WITH_ENV(envp, nenv)                                  \
	size_t nenv##_n = env_count(envp);                    \
	char *nenv[nenv##_n + 3];                             \
	char nenv##_fds[FDS_MAX], nenv##_cli[40];             \
	env_build(envp, nenv, nenv##_fds, sizeof nenv##_fds, nenv##_cli, sizeof nenv##_cli)

MP_EXPORT pid_t fork(void)
{
	pid_t pid = REAL(fork)();

	if (__builtin_expect(mp_conf.log, 0)) {
		MP_SAVE;
		mp_log("fork() = %d%s%s", (int)pid, pid < 0 ? " " : "",
		       pid < 0 ? mp_errname(errno) : "");
		MP_RESTORE;
	}
	return pid;
}

MP_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	WITH_ENV(envp, env);
	MPLOG("execve(%s)", path);
	return REAL(execve)(path, argv, env);
}

MP_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	WITH_ENV(envp, env);
	MPLOG("execvpe(%s)", file);
	return REAL(execvpe)(file, argv, env);
}

MP_EXPORT int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

MP_EXPORT int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

MP_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	WITH_ENV(envp, env);
	MPLOG("fexecve(%d)", fd);
	return REAL(fexecve)(fd, argv, env);
}

MP_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[],
		       int flags)
{
	WITH_ENV(envp, env);
	MPLOG("execveat(%d, %s)", dirfd, path);
	return REAL(execveat)(dirfd, path, argv, env, flags);
}

/* execl, execlp, execle: collect the variadic list into an argv array. */
#define COLLECT_ARGS(arg0, argv, after)                       \
	size_t argv##_n = 1;                                  \
	va_list argv##_ap;                                    \
	va_start(argv##_ap, arg0);                            \
	while (va_arg(argv##_ap, char *))                     \
		argv##_n++;                                   \
	va_end(argv##_ap);                                    \
	char *argv[argv##_n + 1];                             \
	argv[0] = (char *)arg0;                               \
	va_start(argv##_ap, arg0);                            \
	for (size_t i_ = 1; i_ <= argv##_n; i_++)             \
		argv[i_] = va_arg(argv##_ap, char *);         \
	after;                                                \
	va_end(argv##_ap)

MP_EXPORT int execl(const char *path, const char *arg, ...)
{
	COLLECT_ARGS(arg, argv, (void)0);
	return execve(path, argv, environ);
}

MP_EXPORT int execlp(const char *file, const char *arg, ...)
{
	COLLECT_ARGS(arg, argv, (void)0);
	return execvpe(file, argv, environ);
}

MP_EXPORT int execle(const char *path, const char *arg, ...)
{
	char *const *envp;
	COLLECT_ARGS(arg, argv, envp = va_arg(argv_ap, char *const *));
	return execve(path, argv, envp);
}

MP_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
			  const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	WITH_ENV(envp, env);
	MPLOG("posix_spawn(%s)", path);
	return REAL(posix_spawn)(pid, path, fa, attr, argv, env);
}

MP_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			   const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	WITH_ENV(envp, env);
	MPLOG("posix_spawnp(%s)", file);
	return REAL(posix_spawnp)(pid, file, fa, attr, argv, env);
}
