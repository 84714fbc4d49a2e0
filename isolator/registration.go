package isolator

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strconv"

	"golang.org/x/sys/unix"
)

func unixUmask(m int) int { return unix.Umask(m) }

// startApp opens the app registration socket with the configured mode and
// group; the returned function serves apps on it until ctx ends and then
// removes it.
func (d *Daemon) startApp(ctx context.Context) (func() error, error) {
	gid := -1
	if g := d.cfg.SocketGroup; g != "" {
		grp, err := user.LookupGroup(g)
		if err != nil {
			if grp, err = user.LookupGroupId(g); err != nil {
				return nil, fmt.Errorf("socket_group %q: no such group", g)
			}
		}
		gid, _ = strconv.Atoi(grp.Gid)
	}
	ln, err := ListenRegistration(d.cfg.Socket, os.FileMode(d.cfg.SocketMode), gid)
	if err != nil {
		return nil, err
	}
	srv := NewAppServer(AppConfig{AllowUIDs: d.cfg.AllowUIDs, AllowGIDs: d.cfg.AllowGIDs}, d, d.log)
	d.mu.Lock()
	d.onSpawn = srv.OnSpawn
	d.app = srv
	d.mu.Unlock()
	return func() error {
		defer os.Remove(d.cfg.Socket)
		return srv.Serve(ctx, ln)
	}, nil
}
