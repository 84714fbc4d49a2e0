package config

import (
	"os/user"
	"strconv"
	"strings"
	"testing"
)

func TestINSIdentity(t *testing.T) {
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody here")
	}
	cases := []struct {
		name    string
		cfg     Config
		id      int
		uid     string // expected uid (and gid when gid is empty)
		gid     string
		wantErr string
	}{
		{"range first", Config{INSUIDs: "70000-70009"}, 1, "70000", "70000", ""},
		{"range last", Config{INSUIDs: "70000-70009"}, 10, "70009", "70009", ""},
		{"range exhausted", Config{INSUIDs: "70000-70009"}, 11, "", "", "no uid left for INS 11"},
		{"range overrides user", Config{INSUIDs: "70000-70000", INSUser: "nobody"}, 1, "70000", "70000", ""},
		{"range with root", Config{INSUIDs: "0-10"}, 1, "", "", "not 0"},
		{"range reversed", Config{INSUIDs: "10-5"}, 1, "", "", "START ≤ END"},
		{"range garbage", Config{INSUIDs: "lots"}, 1, "", "", "want START-END"},
		{"user by name", Config{INSUser: "nobody"}, 3, nobody.Uid, nobody.Gid, ""},
		{"user by number", Config{INSUser: "70123"}, 1, "70123", "70123", ""},
		{"root refused", Config{INSUser: "root"}, 1, "", "", "not root"},
		{"unknown user", Config{INSUser: "no-such-user-mpshim"}, 1, "", "", "no such user"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.cfg.INSIdentity(c.id)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("INSIdentity = %+v, %v; want an error saying %q", got, err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strconv.Itoa(got.UID) != c.uid || strconv.Itoa(got.GID) != c.gid {
				t.Fatalf("INSIdentity = %+v, want uid %s gid %s", got, c.uid, c.gid)
			}
		})
	}
	if err := (&Config{INSUIDs: "x"}).Validate(); err == nil || !strings.Contains(err.Error(), "ins_uids") {
		t.Errorf("Validate accepted ins_uids x: %v", err)
	}
}
