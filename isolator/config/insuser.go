package config

import (
	"fmt"
	"os/user"
	"strconv"
	"strings"
)

// DefaultINSUser is the system user every INS runs as when neither
// ins_user nor ins_uids is set; the install step (scripts/deps.sh) creates
// it.
const DefaultINSUser = "mpshim-ins"

// INSIdentity is the uid and gid a sealed INS runs as.
type INSIdentity struct {
	UID, GID int
}

// INSIdentities resolves ins_user and ins_uids into the identity of INS
// id: with ins_uids ("START-END") INS id gets uid and gid START+id-1, one
// of its own, and an id beyond the range is an error; otherwise every INS
// gets ins_user (a name or a number; its primary group), DefaultINSUser if
// unset. Root is never accepted.
func (c *Config) INSIdentity(id int) (INSIdentity, error) {
	if c.INSUIDs != "" {
		lo, hi, err := parseUIDRange(c.INSUIDs)
		if err != nil {
			return INSIdentity{}, err
		}
		uid := lo + id - 1
		if id < 1 || uid > hi {
			return INSIdentity{}, fmt.Errorf("ins_uids %s: no uid left for INS %d (the range holds %d)", c.INSUIDs, id, hi-lo+1)
		}
		return INSIdentity{UID: uid, GID: uid}, nil
	}
	name := c.INSUser
	if name == "" {
		name = DefaultINSUser
	}
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
			if err != nil { // a bare number need not be in passwd
				n, _ := strconv.Atoi(name)
				u, err = &user.User{Uid: name, Gid: strconv.Itoa(n)}, nil
			}
		}
	}
	if err != nil {
		return INSIdentity{}, fmt.Errorf("ins_user %q: no such user (create it: useradd --system --no-create-home --shell /usr/sbin/nologin %s, as scripts/deps.sh does)", name, name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil || uid <= 0 || gid <= 0 {
		return INSIdentity{}, fmt.Errorf("ins_user %q: uid %s gid %s: want an unprivileged user (not root)", name, u.Uid, u.Gid)
	}
	return INSIdentity{UID: uid, GID: gid}, nil
}

// parseUIDRange parses "START-END" with 0 < START <= END < 2^31.
func parseUIDRange(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "-")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || lo <= 0 || hi < lo || hi >= 1<<31-1 {
		return 0, 0, fmt.Errorf("ins_uids %q: want START-END, unprivileged uids (not 0), START ≤ END", s)
	}
	return lo, hi, nil
}
