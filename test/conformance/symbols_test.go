package conformance

import (
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/mpshim/mpshim/test/harness"
)

// checkedBinaries are the real Debian server binaries (and the libraries
// that make their socket calls, such as Apache's libapr) whose libc
// imports the shim must cover. The Debian package providing each is named
// so a missing one can be installed.
var checkedBinaries = []struct{ path, pkg string }{
	{"/usr/sbin/nginx", "nginx"},
	{"/usr/sbin/apache2", "apache2"},
	{"/usr/lib/x86_64-linux-gnu/libapr-1.so.0", "libapr1"},
	{"/usr/lib/x86_64-linux-gnu/libaprutil-1.so.0", "libaprutil1"},
	{"/usr/bin/redis-check-rdb", "redis-server"}, // redis-server is a link to it
	{"/usr/bin/memcached", "memcached"},
	{"/usr/sbin/haproxy", "haproxy"},
}

// socketish matches every libc import that touches sockets, descriptors
// or processes in a way the shim must decide on. A new import matching it
// must be interposed or listed in nativeOK with the reason.
var socketish = regexp.MustCompile(`^(__)?(` +
	`accept4?|bind|connect|listen|socket(pair)?|get(sock|peer)name|[gs]etsockopt|shutdown|` +
	`send|sendto|sendmsg|sendmmsg|recv|recvfrom|recvmsg|recvmmsg|sendfile(64)?|` +
	`read|readv|preadv?|write|writev|pwritev?|splice|tee|vmsplice|` +
	`poll|ppoll|select|pselect|fdelt|epoll_[a-z0-9_]+|` +
	`close|close_range|closefrom|dup[23]?|fcntl(64)?|ioctl|` +
	`fork|vfork|_Fork|clone3?|exec[lv]p?e?|fexecve|execveat|posix_spawnp?|system|popen|daemon|` +
	`getaddrinfo|freeaddrinfo|gai_strerror|getnameinfo|gethostby[a-z0-9_]+|getservby[a-z0-9_]+|` +
	`res_[a-z_]+|inet_[a-z0-9_]+|if_[a-z_]+|getifaddrs|freeifaddrs` +
	`)(_chk)?$`)

// nativeOK lists the socket-related imports that are deliberately not
// interposed, with the reason.
var nativeOK = map[string]string{
	"pread":           "positional file I/O: on a socket ESPIPE, natively as on the kernel",
	"preadv":          "positional file I/O: on a socket ESPIPE, natively as on the kernel",
	"pwrite":          "positional file I/O: on a socket ESPIPE, natively as on the kernel",
	"pwritev":         "positional file I/O: on a socket ESPIPE, natively as on the kernel",
	"splice":          "stream I/O runs natively on the socketpair",
	"sendfile":        "stream I/O runs natively on the socketpair",
	"sendfile64":      "stream I/O runs natively on the socketpair",
	"poll":            "readiness is the socketpair's kernel readiness",
	"__poll_chk":      "readiness is the socketpair's kernel readiness",
	"ppoll":           "readiness is the socketpair's kernel readiness",
	"select":          "readiness is the socketpair's kernel readiness",
	"pselect":         "readiness is the socketpair's kernel readiness",
	"__fdelt_chk":     "FD_SET bounds check, no call on the socket",
	"epoll_create":    "epoll sets hold the socketpair ends natively",
	"epoll_create1":   "epoll sets hold the socketpair ends natively",
	"epoll_wait":      "epoll sets hold the socketpair ends natively",
	"epoll_pwait":     "epoll sets hold the socketpair ends natively",
	"socketpair":      "AF_UNIX only: never an INS socket",
	"freeaddrinfo":    "resolver result, no socket: the shim allocates its lists as glibc does",
	"gai_strerror":    "resolver result, no socket",
	"getservbyname_r": "services database lookup, no socket",
	"inet_ntop":       "pure address conversion",
	"inet_pton":       "pure address conversion",
	"if_indextoname":  "interface query on a private netlink/ioctl socket",
	"if_nametoindex":  "interface query on a private netlink/ioctl socket",
	"getifaddrs":      "interface query on a private netlink socket",
	"freeifaddrs":     "interface query result, no socket",
}

func TestServerImportsCovered(t *testing.T) {
	lib := harness.Binary(t, "libmpshim.so")
	exported := nmSymbols(t, lib, "--defined-only")
	for r := range nativeOK {
		if exported[r] {
			t.Errorf("%s is both interposed and listed as native", r)
		}
	}
	for _, b := range checkedBinaries {
		t.Run(strings.TrimPrefix(b.path, "/"), func(t *testing.T) {
			if _, err := os.Stat(b.path); err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s missing: apt-get install %s", b.path, b.pkg)
				}
				t.Skipf("%s not installed (apt-get install %s)", b.path, b.pkg)
			}
			var missing []string
			for s := range nmSymbols(t, b.path, "--undefined-only") {
				if !socketish.MatchString(s) || exported[s] {
					continue
				}
				if _, ok := nativeOK[s]; !ok {
					missing = append(missing, s)
				}
			}
			sort.Strings(missing)
			if len(missing) > 0 {
				t.Errorf("%s imports socket-related symbols that are neither interposed nor known native: %v",
					b.path, missing)
			}
		})
	}
}

// TestSocketishCatchesKnownNames guards the pattern itself: it must match
// every interposed symbol and every native one, and not ordinary names.
func TestSocketishCatchesKnownNames(t *testing.T) {
	lib := harness.Binary(t, "libmpshim.so")
	for s := range nmSymbols(t, lib, "--defined-only") {
		if !socketish.MatchString(s) {
			t.Errorf("pattern misses interposed %s", s)
		}
	}
	for s := range nativeOK {
		if !socketish.MatchString(s) {
			t.Errorf("pattern misses native %s", s)
		}
	}
	for _, s := range []string{"readdir", "closedir", "readlink", "fread", "printf", "malloc"} {
		if socketish.MatchString(s) {
			t.Errorf("pattern matches unrelated %s", s)
		}
	}
}

func nmSymbols(t *testing.T, path, which string) map[string]bool {
	t.Helper()
	out, err := exec.Command("nm", "-D", which, path).CombinedOutput()
	if err != nil {
		t.Fatalf("nm %s: %v\n%s", path, err, out)
	}
	m := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		n := f[len(f)-1]
		if i := strings.Index(n, "@"); i >= 0 {
			n = n[:i]
		}
		m[n] = true
	}
	return m
}
